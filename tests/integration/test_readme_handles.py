"""The README's run-handle example, run as written on the real stack (processors, a worker of
app "shop" with `order.process`: the stack of tests/integration/test_workflows_e2e.py)."""

from __future__ import annotations

import ast
import asyncio
from typing import Any

import steplog
from tests.integration import test_workflows_e2e as e2e
from tests.readme import readme_python

Stack = e2e.Stack
stack = e2e.stack  # the module-scoped fixture: one stack for this module


def test_the_run_handle_example_waits_for_the_results(stack: Stack) -> None:
    earlier = stack.client.start("order.process", {"id": "elsewhere", "amount": 1}, app=e2e.APP)
    namespace: dict[str, Any] = {"client": stack.client, "steplog": steplog,
                                 "run_id": earlier.run_id}
    # The example awaits `result_async` at top level, as in a notebook or an async main.
    code = compile(readme_python("run.result(timeout=60)"), "README.md", "exec",
                   flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)

    async def run_example() -> None:
        awaited = eval(code, namespace)  # a coroutine, since the code awaits
        await awaited

    asyncio.run(run_example())
    # The last lines wait on the run started elsewhere; the run the example started completed
    # (a failure would have been raised again by `result_async`).
    assert namespace["output"] == {"order": "elsewhere",
                                   "charge": {"charged": 1, "currency": "EUR"}}
    assert namespace["run"] == earlier
