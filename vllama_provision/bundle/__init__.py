"""Offline bundles for air-gapped sites: everything an inventory's hosts need, signed.

``vllama-provision bundle INVENTORY --out DIR`` collects, without contacting the hosts, the engine
wheels and their dependencies (installed with ``pip --no-index --require-hashes``), a signed local
package repository of the OS packages hosts may lack, the model files and container images, and
writes ``manifest.json`` (sha256 and size of every file) signed with the operator's ed25519 key
(``manifest.json.sig``, an OpenSSH signature). ``apply --bundle DIR`` checks the signature on the
controller before any host is touched, and every file against the manifest before a host uses it.

Modules: manifest (the file list and its checks), signing (keys, ssh-keygen -Y sign/verify),
targets (a host's OS, architecture and Python), aptrepo (OS packages and the signed repository),
pipwheels (engine wheels with their dependencies), collect (building a bundle), consume (what a
host takes from a bundle), options (the ``--bundle`` CLI options), command (the ``bundle`` command).
"""
