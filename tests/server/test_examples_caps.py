"""An organisation's own cap on the training examples it may claim (clients.json "max_examples")."""

from __future__ import annotations

from pathlib import Path

from fedsilo.common.bundles import load_server_bundle
from fedsilo.provision.cli import init_federation
from fedsilo.server.registry import ClientRegistry
from fedsilo.server.run_files import ClientIdLog


def test_an_organisations_cap_in_clients_json_bounds_what_it_may_claim(tmp_path: Path) -> None:
    init_federation(tmp_path / "fed", ["127.0.0.1"], ["org-a", "org-b"], job_id=3)
    folder = tmp_path / "fed" / "server"
    (folder / "clients.json").write_text(
        '{"clients": ["org-a", "org-b"], "max_examples": {"org-a": 500}}'
    )
    assert load_server_bundle(folder).max_examples == {"org-a": 500}
    registry = ClientRegistry(3, ClientIdLog(tmp_path / "ids"), lambda: load_server_bundle(folder))
    assert registry.examples_cap("org-a", 10_000) == 500  # its own cap, below the job's
    assert registry.examples_cap("org-a", 100) == 100  # the job's, when lower
    assert registry.examples_cap("org-b", 10_000) == 10_000  # no cap of its own
    (folder / "clients.json").write_text(
        '{"clients": ["org-a", "org-b"], "max_examples": {"org-b": 7}}'
    )
    assert registry.examples_cap("org-b", 10_000) == 7  # read afresh, as the names are
