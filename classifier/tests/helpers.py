"""Assertions shared by the test modules (a test module never imports another)."""


def assert_error(response, status: int, code: str):
    """A JSON error answer with this status and error code, and a message; its body."""
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["success"] is False
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body
