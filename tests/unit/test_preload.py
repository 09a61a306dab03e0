"""The preload callback imports, in ansible-playbook's main process, the actions every host's
worker runs, so forked workers find them imported; its names are checked here because the
callback stays silent about an action it cannot import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from vllama_provision import paths

ROOT = Path(__file__).resolve().parents[2]
PROBE = r"""
import sys
from ansible.plugins.loader import callback_loader, init_plugin_loader
init_plugin_loader([sys.argv[1]])
plugin = callback_loader.get("vllama.provision.vllama_preload")
module = sys.modules[type(plugin).__module__]
action = "ansible_collections.vllama.provision.plugins.action."
for name in module.PRELOADED:
    print(name, (action + name) in sys.modules)
print("package", "vllama_provision.planner" in sys.modules, "httpx" in sys.modules)
"""


def test_the_preload_imports_every_named_action_and_the_planner() -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE, str(paths.collections_dir())],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert lines.pop("package") == "True False"  # planning without the HTTP client
    assert lines == {"vllama_plan": "True", "vllama_state": "True", "vllama_sources": "True",
                     "vllama_converged": "True"}
    for name in lines:
        assert (ROOT / "plugins" / "action" / f"{name}.py").is_file()


def test_the_cli_enables_it() -> None:
    assert "vllama.provision.vllama_preload" in (ROOT / "ansible.cfg").read_text()
