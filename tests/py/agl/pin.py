"""Turns a `pip install --dry-run --report` of a requirements.in into a hashed requirements file.

usage: pin.py REPORT.json HEADER_FILE > requirements.txt

The report names, for every package pip resolved, the exact file it chose and that file's sha256
(pip --require-hashes then accepts exactly those files). HEADER_FILE is copied on top unchanged.
"""
import json
import sys


def main():
    report = json.load(open(sys.argv[1]))
    lines = []
    for item in report["install"]:
        meta = item["metadata"]
        name, version = meta["name"], meta["version"]
        # A dependency on `name[extra]` is only met in --require-hashes mode by a pin with the extra.
        if item.get("requested_extras"):
            name += "[" + ",".join(sorted(item["requested_extras"])) + "]"
        digest = item["download_info"]["archive_info"]["hashes"]["sha256"]
        lines.append(f"{name}=={version} \\\n    --hash=sha256:{digest}\n")
    sys.stdout.write(open(sys.argv[2]).read())
    sys.stdout.writelines(sorted(lines, key=str.lower))


if __name__ == "__main__":
    main()
