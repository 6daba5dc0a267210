"""Schemathesis against the service's own OpenAPI schema, in process: no generated request may get
a 5xx, and responses must match the schema.

The jobs run on a backend in memory (nothing is started), so this checks the API layer: validation,
auth, path checks, uploads. ``/api/events`` is left out: it streams for as long as the client
listens. Schemathesis' "schema-valid data is accepted" check is off: a run spec that fits the schema
is still refused (422) when, say, its dataset does not exist, which no schema can say.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance
from service_support import AUTH, FakeBackend, make_settings, write_scenes

from services.app import create_app


def test_no_server_errors_and_responses_match_the_schema(tmp_path):
    write_scenes(tmp_path / "data" / "labeled", n=2)
    app = create_app(make_settings(tmp_path), FakeBackend(), orchestrate=False)
    app.state.service.ready.set()  # as after start-up (schemathesis runs no lifespan)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    operations = [op for op in operations if op.path != "/api/events"]
    assert len(operations) == 19  # every route but /api/events, so none is silently skipped
    for operation in operations:
        # schemathesis' pytest plugin cannot load a schema from a fixture under pytest 9, so each
        # operation gets its own hypothesis test here.
        @given(case=operation.as_strategy())
        @settings(
            max_examples=50,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case):
            case.call_and_validate(headers=AUTH, excluded_checks=[positive_data_acceptance])

        check()
