"""Write the gateway's key maps on the host from the controller's keys (never printed).

Client keys are read from their key files or the controller's generated copies (made on first
use); the host gets only their SHA-256 (clients.map: hash, key name). Each instance's own key
is read from the controller's copy and written to upstreams.map, which HAProxy adds to the
requests it forwards to that instance. With TLS, the listener's certificate and key go to
tls.pem the same way. All are 0600 root. The module that writes them
(vllama_gateway_keys) runs on the host with the keys as no_log arguments.
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible_collections.vllama.provision.plugins.plugin_utils.vllama_package import require_package

try:  # the vllama-provision package, in exactly this collection's version (checked at run)
    from vllama_provision.gateway import GatewayKeyError, key_maps, tls_pem
except ImportError as exc:
    VLLAMA_IMPORT_ERROR = exc
else:
    VLLAMA_IMPORT_ERROR = None


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        require_package(VLLAMA_IMPORT_ERROR)
        result = super().run(tmp, task_vars)
        plan = self._task.args.get("plan") or {}
        try:
            clients, upstreams = key_maps(plan)
            pem = tls_pem(plan)
        except GatewayKeyError as exc:
            result.update(failed=True, msg=str(exc))
            return result
        paths = plan["paths"]
        module = self._execute_module(
            module_name="vllama.provision.vllama_gateway_keys",
            module_args={"clients_map": paths["clients_map"],
                         "upstreams_map": paths["upstreams_map"],
                         "clients": clients, "upstreams": upstreams,
                         "tls_pem_file": paths["tls_pem"], "tls_pem": pem},
            task_vars=task_vars)
        module.pop("invocation", None)
        result.update(module)
        return result
