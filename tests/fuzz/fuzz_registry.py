"""Atheris (libFuzzer) harness for the registry loader: any TOML text either loads into a
MeshConfig or raises ConfigError, and a registry that loads can be rendered and called with.

    pip install atheris
    python tests/fuzz/fuzz_registry.py -dict=tests/fuzz/registry.dict WORKDIR tests/fuzz/corpus/registry

WORKDIR receives new inputs (libFuzzer writes to the first corpus folder). Add ``-runs=N`` or
``-max_total_time=S`` for a bounded run, as ``tests/unit/test_fuzz.py`` does. A crash leaves a
``crash-*`` file (see ``-artifact_prefix``) to replay with ``python tests/fuzz/fuzz_registry.py FILE``.
"""

from __future__ import annotations

import sys

import atheris

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

with atheris.instrument_imports(include=["mesh_client"]):  # only the library: quicker to start
    from registry_checks import use  # (this folder) what a loaded registry must survive

    from mesh_client.errors import ConfigError
    from mesh_client.registry import load_mapping


def test_one_input(data: bytes) -> None:
    try:
        text = data.decode("utf-8")
        parsed = tomllib.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return  # load_file turns both into ConfigError; the loader never sees them
    try:
        config = load_mapping(parsed, source="fuzz")
    except ConfigError:
        return
    use(config)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
