"""Access control beyond test_app.py: the key is compared in constant time, protected endpoints refuse a wrong
key the same way as a missing one, and a model name is only ever looked up in the registry, never on disk.
"""

from __future__ import annotations

import builtins
import hmac
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import server.registry
from server.app import create_app
from server.settings import Settings
from tests.server.conftest import sudoku_puzzle, write_checkpoint

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sudoku-tiny (loaded), and next to it what a path-like name could try to reach: a second checkpoint that is
    not loaded (secret-model) and a plain file (secret.txt)."""
    weights = tmp_path_factory.mktemp("weights")
    write_checkpoint(weights / "sudoku-tiny", "sudoku", 81, seed=1)
    shutil.copytree(weights / "sudoku-tiny", weights / "secret-model")
    (weights / "secret.txt").write_text("not for clients")
    return weights


@pytest.fixture(scope="module")
def client(weights: Path) -> Iterator[TestClient]:
    settings = Settings(weights_dir=weights, models=["sudoku-tiny"], threads=1, slots=4, api_key=KEY)
    with TestClient(create_app(settings.model_copy(update={"protect_metrics": True}))) as client:
        yield client


def auth(key: str = KEY) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_the_key_is_checked_with_hmac_compare_digest(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("server.app.hmac.compare_digest", spy)
    body = {"puzzle": "sudoku", "grid": sudoku_puzzle(), "max_steps": 1}
    assert client.post("/solve", json=body, headers=auth("x")).status_code == 401  # shorter: no early exit
    assert client.post("/solve", json=body, headers=auth(KEY + "!")).status_code == 401
    assert client.post("/solve", json=body, headers=auth()).status_code == 200
    assert calls == [(b"x", KEY.encode()), (KEY.encode() + b"!", KEY.encode()), (KEY.encode(), KEY.encode())]


@pytest.mark.parametrize("path", ["/metrics", "/models"])
@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {KEY}", f"Bearer {KEY} "])
def test_protected_endpoints_refuse_a_wrong_key_like_a_missing_one(
    client: TestClient, path: str, header: str | None
) -> None:
    response = client.get(path, headers={"authorization": header} if header else {})
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"] == "unauthorized"


def test_health_stays_open_and_protected_endpoints_open_with_the_key(client: TestClient) -> None:
    for path in ("/health/live", "/health/ready"):
        assert client.get(path).status_code == 200, path
    for path in ("/metrics", "/models"):
        assert client.get(path, headers=auth()).status_code == 200, path


@pytest.fixture
def disk_spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path opened, stat-ed or listed, and every checkpoint loaded, while the test runs."""
    touched: list[str] = []

    def spying(real: Any) -> Any:
        def spy(path: Any, *args: Any, **kwargs: Any) -> Any:
            touched.append(os.fsdecode(path) if isinstance(path, str | bytes | os.PathLike) else repr(path))
            return real(path, *args, **kwargs)

        return spy

    monkeypatch.setattr(builtins, "open", spying(builtins.open))
    monkeypatch.setattr(io, "open", spying(io.open))
    monkeypatch.setattr(os, "open", spying(os.open))
    monkeypatch.setattr(os, "stat", spying(os.stat))
    monkeypatch.setattr(os, "listdir", spying(os.listdir))
    monkeypatch.setattr(os, "scandir", spying(os.scandir))
    monkeypatch.setattr(server.registry, "load_checkpoint", spying(server.registry.load_checkpoint))
    return touched


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("../weights/x", 422),
        ("/etc/passwd", 422),
        ("..", 422),
        ("./secret.txt", 422),
        ("sudoku-tiny/../secret-model", 422),
        ("..\\secret.txt", 422),
        ("%2e%2e%2fsecret.txt", 422),
        ("~/secret.txt", 422),
        ("secret.txt\x00", 422),
        ("", 422),
        ("secret.txt", 404),
        ("secret-model", 404),
        ("sudoku-tiny..", 404),
    ],
)
def test_model_names_are_looked_up_in_the_registry_never_on_disk(
    client: TestClient, disk_spy: list[str], name: str, status: int
) -> None:
    body = {"puzzle": "sudoku", "grid": sudoku_puzzle(), "max_steps": 1, "model": name}
    response = client.post("/solve", json=body, headers=auth())
    assert response.status_code == status and response.json()["field"] == "model", response.text
    batch = client.post("/solve/batch", json={"requests": [body]}, headers=auth())
    assert batch.status_code == (200 if status == 404 else 422), batch.text
    touched = [p for p in disk_spy if "secret" in p or "passwd" in p or "weights" in p or "sudoku-tiny" in p]
    assert touched == [], touched  # nothing under the weights directory, nothing the name points at
    assert [m["name"] for m in client.get("/models", headers=auth()).json()["models"]] == ["sudoku-tiny"]
