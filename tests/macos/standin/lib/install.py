"""What to install on a lab host to make it a stand-in Mac: the files of tests/macos/standin.

``files(root)`` lists every file the host needs, for an installer (the lab's Ansible play, a
test's fixture) to write as given: the stand-ins under the command root ``root`` at macOS's
paths (root/usr/bin/sw_vers, root/bin/launchctl... mode 0755), their shared code
(root/lib/standin.py, 0644), ``root/usr/bin/python3`` as a link to Debian's /usr/bin/python3
(the Python a Mac's Command Line Tools provide there), and the unit that imitates launchd at
boot (/etc/systemd/system/vllama-macos-launchd-boot.service, @ROOT@ replaced by ``root``;
enable it). Debian's own commands are left alone.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent.parent  # tests/macos/standin
UNIT = "vllama-macos-launchd-boot.service"
SCRIPTS = ("usr/bin/uname", "usr/bin/sw_vers", "usr/sbin/sysctl", "usr/sbin/system_profiler",
           "usr/bin/fdesetup", "usr/bin/xcode-select", "bin/launchctl", "usr/bin/pmset",
           "usr/sbin/newsyslog")


def files(root: str) -> list[dict]:
    """[{'dest', 'mode', 'content'} | {'dest', 'link'}] for command root ``root``."""
    root = root.rstrip("/")
    if not root.startswith("/"):
        raise ValueError(f"the command root must be an absolute path: {root!r}")
    listed = [{"dest": f"{root}/{script}", "mode": "0755",
               "content": (HERE / script).read_bytes()} for script in SCRIPTS]
    listed.append({"dest": f"{root}/lib/standin.py", "mode": "0644",
                   "content": (HERE / "lib" / "standin.py").read_bytes()})
    listed.append({"dest": f"/etc/systemd/system/{UNIT}", "mode": "0644",
                   "content": (HERE / UNIT).read_bytes().replace(b"@ROOT@", root.encode())})
    listed.append({"dest": f"{root}/usr/bin/python3", "link": "/usr/bin/python3"})
    return listed
