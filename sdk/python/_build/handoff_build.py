"""A PEP 517 build backend for the handoff package, in the standard library
only, so that ``pip install ./sdk/python`` needs no index and no build
dependencies (setuptools older than 70.1 cannot build a wheel without the
separate ``wheel`` package). It builds a pure-Python wheel of src/handoff
and an sdist of this directory."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
import tomllib
import zipfile

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _project() -> dict:
    with open(os.path.join(HERE, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def _metadata() -> str:
    p = _project()
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {p['name']}",
        f"Version: {p['version']}",
        f"Summary: {p['description']}",
        f"Requires-Python: {p['requires-python']}",
    ]
    lines += [f"Classifier: {c}" for c in p.get("classifiers", [])]
    with open(os.path.join(HERE, p["readme"]), encoding="utf-8") as f:
        readme = f.read()
    lines.append("Description-Content-Type: text/markdown")
    return "\n".join(lines) + "\n\n" + readme


def _files() -> list[tuple[str, bytes]]:
    src = os.path.join(HERE, "src")
    out = []
    for d, _, names in os.walk(os.path.join(src, "handoff")):
        for n in sorted(names):
            if n.endswith(".py") or n == "py.typed":
                path = os.path.join(d, n)
                with open(path, "rb") as f:
                    out.append((os.path.relpath(path, src).replace(os.sep, "/"), f.read()))
    return sorted(out)


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def get_requires_for_build_wheel(config_settings=None):  # noqa: D103 - PEP 517 hook
    return []


def get_requires_for_build_sdist(config_settings=None):  # noqa: D103 - PEP 517 hook
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    """Write handoff-VERSION-py3-none-any.whl into wheel_directory."""
    p = _project()
    dist = f"{p['name']}-{p['version']}"
    info = f"{dist}.dist-info"
    files = _files()
    files.append((f"{info}/METADATA", _metadata().encode()))
    files.append((f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: handoff_build\nRoot-Is-Purelib: true\nTag: py3-none-any\n"))
    record = [_record_line(n, d) for n, d in files] + [f"{info}/RECORD,,"]
    files.append((f"{info}/RECORD", ("\n".join(record) + "\n").encode()))
    name = f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w", zipfile.ZIP_DEFLATED) as z:
        for n, d in files:
            zi = zipfile.ZipInfo(n, date_time=(2020, 1, 1, 0, 0, 0))
            zi.external_attr = 0o644 << 16
            z.writestr(zi, d, zipfile.ZIP_DEFLATED)
    return name


def build_sdist(sdist_directory, config_settings=None):
    """Write handoff-VERSION.tar.gz into sdist_directory."""
    p = _project()
    dist = f"{p['name']}-{p['version']}"
    name = f"{dist}.tar.gz"
    with tarfile.open(os.path.join(sdist_directory, name), "w:gz") as t:
        for rel in ["pyproject.toml", p["readme"], "_build/handoff_build.py"] + ["src/" + n for n, _ in _files()]:
            t.add(os.path.join(HERE, rel), arcname=f"{dist}/{rel}")
        pkg = f"Metadata-Version: 2.1\nName: {p['name']}\nVersion: {p['version']}\n".encode()
        ti = tarfile.TarInfo(f"{dist}/PKG-INFO")
        ti.size = len(pkg)
        t.addfile(ti, io.BytesIO(pkg))
    return name
