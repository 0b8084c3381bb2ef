"""Schemathesis hooks for the suite's run (tests/test_serving_robustness.py): loaded through
``SCHEMATHESIS_HOOKS``.

Bodies that carry a JSON Schema of their own (``response_format``, ``tools``) are left out of the
generated cases. Whether the server can enforce such a schema depends on the keywords it uses and on
whether it can be satisfied at all (``{"required": ["a"], "additionalProperties": false}`` cannot),
which no OpenAPI document can state; the server answers 400 naming the field for those, and
tests/test_assistant.py generates such bodies itself (Hypothesis) and checks every answer.
"""

import schemathesis

OWN_SCHEMAS = ("response_format", "tools", "tool_choice")


@schemathesis.hook
def filter_body(ctx, body):
    return not (isinstance(body, dict) and any(body.get(field) is not None for field in OWN_SCHEMAS))
