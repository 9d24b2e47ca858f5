"""Turns a `pip install --dry-run --report` of a requirements.in into a hashed requirements file.

usage: pin.py REPORT.json HEADER_FILE > requirements.txt

The report names, for every package pip resolved, the exact file it chose and that file's sha256
(pip --require-hashes then accepts exactly those files). HEADER_FILE is copied on top unchanged.
"""
import json
import sys

# Extras that a dependency asks for (not the requirements.in), by who asks: litellm's
# `httpx[http2]`. Pinned only where the asker is in the report (agent-lightning 1.0 has no litellm,
# and no h2 for the extra to need).
EXTRAS_ASKED_BELOW = {"httpx": ("litellm", ["http2"])}


def main():
    report = json.load(open(sys.argv[1]))
    lines = []
    resolved = {item["metadata"]["name"].lower() for item in report["install"]}
    for item in report["install"]:
        meta = item["metadata"]
        name, version = meta["name"], meta["version"]
        digest = item["download_info"]["archive_info"]["hashes"]["sha256"]
        # A dependency on `name[extra]` is only held to the pin, by the machine's pip (23.2.1) in
        # --require-hashes mode, by a pin with that extra too; without one, pip resolves it
        # against the newest release in range and refuses it as unpinned (httpx 0.29.0 did this
        # to `httpx[http2]`, which litellm asks for, on 2026-12-02). The report names only the
        # extras asked for at the top, so the ones asked for further down are listed here.
        extras = set(item.get("requested_extras") or [])
        asker, below = EXTRAS_ASKED_BELOW.get(name.lower(), (None, []))
        if asker in resolved:
            extras |= set(below)
        forms = [name] + ([name + "[" + ",".join(sorted(extras)) + "]"] if extras else [])
        for form in forms:
            lines.append(f"{form}=={version} \\\n    --hash=sha256:{digest}\n")
    sys.stdout.write(open(sys.argv[2]).read())
    sys.stdout.writelines(sorted(lines, key=str.lower))


if __name__ == "__main__":
    main()
