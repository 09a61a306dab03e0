#!/usr/bin/python
"""Download a Hugging Face model snapshot into the model store, checking every file.

Standard library only (hosts have no huggingface_hub before their engine exists). Files are listed
with the Hub's tree API, which gives each file's hash: the sha256 of LFS files (weights, GGUF)
and the git blob sha1 of small files (configs, tokenizers). Each file is downloaded under a
temporary name, checked against that hash, and only then renamed into place; files already
present and matching are kept. The token (for gated models) is read from a 0600 file on the host
and never returned.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllama_hf_download
short_description: Download a Hugging Face snapshot into the vllama model store
description:
  - Download a Hugging Face model snapshot into the model store, checking every file.
options:
  repo:
    description: ORG/NAME.
    type: str
    required: true
  revision:
    description: Commit, tag or branch (pin a commit for reproducible releases).
    type: str
    default: main
  dest:
    description: Store folder of this snapshot.
    type: path
    required: true
  files:
    description: Only these files (for example the GGUF llama.cpp serves); empty means the files
      an engine needs (configs, tokenizer, safetensors weights).
    type: list
    elements: str
    default: []
  sha256:
    description: Pinned sha256 of the single file in C(files).
    type: str
    default: ""
  endpoint:
    description: Hub endpoint (a mirror, or the Hub itself).
    type: str
    default: https://huggingface.co
  token_file:
    description: File holding an access token (gated models).
    type: path
    default: ""
author: vllama-provision maintainers (@vllama-provision)
"""

EXAMPLES = r"""
- name: Download the model.
  vllama.provision.vllama_hf_download:
    repo: Qwen/Qwen2.5-0.5B-Instruct
    revision: 7ae557604adf67be50417f59c2c2f167def9a775
    dest: /tank/ai/models/qwen--qwen2.5-0.5b-instruct/7ae557604adf67be50417f59c2c2f167def9a775
"""

RETURN = r"""
commit:
  description: The commit the revision resolved to.
  returned: always
  type: str
files:
  description: Files in the snapshot, with their hashes.
  returned: always
  type: list
"""

import fnmatch
import hashlib
import json
import os
import urllib.error
import urllib.parse

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import ConnectionError as UrlError
from ansible.module_utils.urls import open_url

# What an engine needs from a repository when no file is named.
DEFAULT_PATTERNS = ("*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken",
                    "*.txt", "*.jinja")


class DownloadError(Exception):
    pass


def _get(url, token, timeout=60):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        return open_url(url, headers=headers, http_agent="vllama-provision", timeout=timeout)
    except urllib.error.HTTPError as exc:
        hint = (" (gated or private: set vllama_hf_token_file to a file holding a token)"
                if exc.code in (401, 403) else "")
        raise DownloadError(f"{url}: HTTP {exc.code}{hint}") from None
    except (urllib.error.URLError, UrlError, OSError) as exc:
        raise DownloadError(f"{url}: {exc}") from None


def list_files(endpoint, repo, revision, token):
    """(commit, [{path, size, sha256 | gitsha1}]) from the Hub's API."""
    quoted_rev = urllib.parse.quote(revision, safe="")
    with _get(f"{endpoint}/api/models/{repo}/revision/{quoted_rev}", token) as resp:
        commit = json.load(resp).get("sha") or revision
    with _get(f"{endpoint}/api/models/{repo}/tree/{commit}?recursive=true", token) as resp:
        tree = json.load(resp)
    files = []
    for entry in tree:
        if entry.get("type") != "file":
            continue
        lfs = entry.get("lfs") or {}
        files.append({"path": entry["path"], "size": int(lfs.get("size") or entry.get("size", 0)),
                      "sha256": lfs.get("oid", ""), "gitsha1": "" if lfs else entry.get("oid", "")})
    return commit, files


def select(files, wanted):
    if wanted:
        by_path = {f["path"]: f for f in files}
        missing = [w for w in wanted if w not in by_path]
        if missing:
            raise DownloadError(f"not in the repository: {', '.join(missing)}")
        return [by_path[w] for w in wanted]
    return [f for f in files
            if any(fnmatch.fnmatch(os.path.basename(f["path"]), p) for p in DEFAULT_PATTERNS)]


def digest_ok(path, entry):
    if entry["sha256"]:
        digest = hashlib.sha256()
    elif entry["gitsha1"]:
        digest = hashlib.sha1(usedforsecurity=False)
        digest.update(f"blob {os.path.getsize(path)}\0".encode())
    else:
        return os.path.getsize(path) == entry["size"]
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest() == (entry["sha256"] or entry["gitsha1"])


def fetch(endpoint, repo, commit, entry, dest, token):
    """Download one file under a temporary name, check it, rename it into place."""
    target = os.path.join(dest, entry["path"])
    if os.path.isfile(target) and digest_ok(target, entry):
        return False
    os.makedirs(os.path.dirname(target), exist_ok=True)
    partial = os.path.join(os.path.dirname(target), ".partial-" + os.path.basename(target))
    url = f"{endpoint}/{repo}/resolve/{commit}/{urllib.parse.quote(entry['path'])}"
    with _get(url, token, timeout=600) as resp, open(partial, "wb") as out:
        for block in iter(lambda: resp.read(1 << 20), b""):
            out.write(block)
    if not digest_ok(partial, entry):
        os.unlink(partial)
        raise DownloadError(f"{entry['path']}: the download does not match the Hub's hash "
                            f"({entry['sha256'] or entry['gitsha1']})")
    os.replace(partial, target)
    return True


def download(endpoint, repo, revision, dest, wanted, pinned, token):
    commit, files = list_files(endpoint.rstrip("/"), repo, revision, token)
    chosen = select(files, wanted)
    if pinned:
        if len(chosen) != 1:
            raise DownloadError("model_sha256 pins one file: name it with model_file")
        if chosen[0]["sha256"] and chosen[0]["sha256"] != pinned:
            raise DownloadError(f"{chosen[0]['path']}: the Hub lists sha256 "
                                f"{chosen[0]['sha256']}, the inventory pins {pinned}")
        chosen[0] = {**chosen[0], "sha256": pinned, "gitsha1": ""}
    changed = False
    for entry in chosen:
        changed = fetch(endpoint.rstrip("/"), repo, commit, entry, dest, token) or changed
    return changed, commit, chosen


def main():
    module = AnsibleModule(argument_spec={
        "repo": {"type": "str", "required": True},
        "revision": {"type": "str", "default": "main"},
        "dest": {"type": "path", "required": True},
        "files": {"type": "list", "elements": "str", "default": []},
        "sha256": {"type": "str", "default": ""},
        "endpoint": {"type": "str", "default": "https://huggingface.co"},
        "token_file": {"type": "path", "default": ""},
    }, supports_check_mode=False)
    p = module.params
    token = ""
    if p["token_file"]:
        try:
            with open(p["token_file"], encoding="utf-8") as handle:
                token = handle.read().strip()
        except OSError as exc:
            module.fail_json(msg=f"cannot read the token file: {exc.strerror}")
    try:
        changed, commit, files = download(p["endpoint"], p["repo"], p["revision"], p["dest"],
                                          p["files"], p["sha256"].lower(), token)
    except DownloadError as exc:
        module.fail_json(msg=f"{p['repo']}@{p['revision']}: {exc}")
    module.exit_json(changed=changed, commit=commit, files=files)


if __name__ == "__main__":
    main()
