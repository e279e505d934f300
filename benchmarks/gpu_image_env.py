"""A CPU Python environment that holds only what the one-H200 device image holds, for the dry run of
``benchmarks/gpu_check.sh``: it proves that the carried wheels (``.whl/``) plus the image's packages are all that
megasynth's GPU check imports.

From a source environment of Python 3.12 (here ``/work/venv312``: torch's CUDA build, which runs on the CPU,
megatron-core, transformers, …) it makes ``DEST/venv`` (no system site-packages, no pip of its own) whose only
other packages are symbolic links in ``DEST/site`` to the distributions of the source environment named in
``benchmarks/gpu_image_packages.txt`` (the image's list). Everything else of the source environment (megatron-core,
megasynth itself, nltk, datasets, …) is left out. Versions are the source environment's, not the image's (torch
2.14.1 here against 2.11.0 there).

    python benchmarks/gpu_image_env.py --source /work/venv312 --dest /tmp/gpu_image
    PYTHON=/tmp/gpu_image/venv/bin/python bash benchmarks/gpu_check.sh --dry-run --out /tmp/gpu_check_dry

Prints the distributions linked, those of the list that the source lacks, and those of the source left out.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

_DUMP = r"""
import importlib.metadata as md, json, pathlib, site, sys
from packaging.requirements import Requirement
out = {"base": sys.base_prefix, "version": "%d.%d" % sys.version_info[:2], "site": site.getsitepackages()[0], "dists": {}}
def needs(d):
    out = []
    for r in d.requires or []:
        req = Requirement(r)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            out.append(req.name)
    return out
for d in md.distributions():
    root = pathlib.Path(d.locate_file(""))
    tops = set()
    for f in d.files or []:
        parts = pathlib.PurePosixPath(str(f)).parts
        if parts and parts[0] not in ("..", "__pycache__") and not parts[0].endswith(".pth"):
            tops.add(parts[0])
    out["dists"][d.metadata["Name"]] = {"root": str(root), "tops": sorted(tops), "needs": needs(d)}
print(json.dumps(out))
"""


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", required=True, help="a Python 3.12 virtual environment (its root)")
    ap.add_argument("--dest", required=True, help="new environment's root (replaced if it exists)")
    ap.add_argument("--packages", default=str(Path(__file__).with_name("gpu_image_packages.txt")))
    args = ap.parse_args()

    wanted = {_norm(line.strip()) for line in Path(args.packages).read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    src_py = Path(args.source) / "bin" / "python"
    info = json.loads(subprocess.run([str(src_py), "-c", _DUMP], check=True, capture_output=True, text=True).stdout)
    dest = Path(args.dest)
    if dest.exists():
        shutil.rmtree(dest)
    site_dir = dest / "site"
    site_dir.mkdir(parents=True)
    base_py = Path(info["base"]) / "bin" / f"python{info['version']}"
    subprocess.run([str(base_py), "-m", "venv", "--without-pip", str(dest / "venv")], check=True)
    # The image's packages and, in the source's versions, what they need: a newer huggingface_hub of the source
    # may need a package (httpx2) that the image's version does not, which is no gap of the image.
    by_norm = {_norm(n): n for n in info["dists"]}
    closure, todo = set(), [n for n in wanted if n in by_norm]
    while todo:
        n = todo.pop()
        if n in closure:
            continue
        closure.add(n)
        todo.extend(_norm(r) for r in info["dists"][by_norm[n]]["needs"] if _norm(r) in by_norm)
    linked, left_out = [], []
    for name, d in sorted(info["dists"].items()):
        if _norm(name) not in closure:
            left_out.append(name)
            continue
        for top in d["tops"]:
            src = Path(d["root"]) / top
            if src.exists() and not (site_dir / top).exists():
                (site_dir / top).symlink_to(src)
        linked.append(name)
    venv_site = next((dest / "venv" / "lib").glob("python*/site-packages"))
    # addsitedir (not a plain path line) so that the .pth files among the linked packages are processed too.
    (venv_site / "_gpu_image.pth").write_text(f"import site; site.addsitedir({str(site_dir)!r})\n")
    missing = sorted(wanted - {_norm(n) for n in info["dists"]})
    print(f"{dest / 'venv' / 'bin' / 'python'}: Python {info['version']} with {len(linked)} distributions of the image "
          f"list linked from {args.source}")
    extra = sorted(n for n in linked if _norm(n) not in wanted)
    print(f"linked as needs of the image's packages in the source's versions (not on the image list): "
          f"{', '.join(extra) or '-'}")
    print(f"left out (not on the image): {', '.join(left_out) or '-'}")
    print(f"on the image, not in the source (cannot be mimicked): {len(missing)}: {', '.join(missing)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
