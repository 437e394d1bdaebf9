"""The service's tests. `test_<module>.py` tests that module of classifier/ (`test_engines`
the engines package, `test_page` and `test_page_browser` the page, `test_v1` and `test_v2`
also their wire formats, tfserving and triton, through the clients that speak them); `test_serving`,
`test_faults`, `test_security`, `test_hostile_input`, `test_observability`,
`test_openapi`, `test_manifests` and `test_settings` test the running service, its
deployment and its documents as a whole. Shared helpers: `helpers`, generated images:
`imagegen`, fixtures and the `slow` marker: `conftest`."""
