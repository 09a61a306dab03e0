"""Lab host benchmark (not part of the tests): image build, boot and no-op Ansible timings.

Run as root: ``python benchmarks/lab_bench.py [--skip-golden]``. Prints the golden image build
time (a forced rebuild into a temporary cache folder), the boot time of 1 and of 8 hosts (until
every sshd accepts the lab key), and a converged no-op Ansible run (facts + one idempotent task)
on 1 versus 8 hosts with the ratio.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vllama_provision.lab import golden
from vllama_provision.lab.handle import Lab
from vllama_provision.lab.system import require_lab_machine

NOOP_PLAY = """\
- name: Converged no-op.
  hosts: all
  gather_facts: true
  tasks:
    - name: Keep a folder.
      ansible.builtin.file:
        path: /var/lib/vllama-bench
        state: directory
        mode: "0755"
"""


def golden_build_seconds() -> float:
    tmp = Path(tempfile.mkdtemp(prefix="vllama-bench-golden-"))
    try:
        rec = golden.recipe(golden.DEFAULT_SUITE)
        return golden.build(rec, tmp / rec.key)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def playbook_seconds(lab: Lab, play: Path) -> tuple[float, str]:
    env = {**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_FORKS": "10",
           "ANSIBLE_INVENTORY_UNPARSED_FAILED": "1", "ANSIBLE_NOCOLOR": "1"}
    cmd = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(lab.inventory_path),
           str(play)]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    took = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"ansible-playbook failed:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    return took, proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-golden", action="store_true", help="skip the forced image build")
    args = parser.parse_args()
    require_lab_machine(need_debootstrap=not args.skip_golden)
    golden.ensure()  # boot timings must not include a first build
    results: list[tuple[str, float]] = []
    if not args.skip_golden:
        results.append(("golden image build (bookworm, forced)", golden_build_seconds()))
        print(f"{results[-1][0]:<44} {results[-1][1]:7.1f} s", flush=True)
    play = Path(tempfile.mkdtemp(prefix="vllama-bench-")) / "noop.yml"
    play.write_text(NOOP_PLAY)
    noop: dict[int, float] = {}
    for n in (1, 8):
        name = f"bench-{secrets.token_hex(3)}"
        started = time.monotonic()
        lab = Lab.up(n, lab=name)
        results.append((f"boot {n} host{'s' if n > 1 else ''} (until sshd accepts the key)",
                        time.monotonic() - started))
        print(f"{results[-1][0]:<44} {results[-1][1]:7.1f} s", flush=True)
        try:
            playbook_seconds(lab, play)  # converge once
            noop[n], _ = playbook_seconds(lab, play)
            results.append((f"converged no-op run on {n} host{'s' if n > 1 else ''}", noop[n]))
            print(f"{results[-1][0]:<44} {results[-1][1]:7.1f} s", flush=True)
        finally:
            lab.down()
    shutil.rmtree(play.parent, ignore_errors=True)
    print(f"{'no-op run, 8 hosts / 1 host':<44} {noop[8] / noop[1]:7.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
