"""Drives `tierd mcp` with the official MCP Python SDK as a real client.

Usage: client.py MODE TIERD [ARGS...]
  MODE: "auto" (the SDK's default: server/discover, the stateless revision,
        falling back to initialize) or "legacy" (the initialize handshake).
Prints one JSON object with what it saw; exits non-zero on a failed check.
tests/mcp.rs runs it and checks the report too.
"""

import asyncio
import json
import sys

from mcp import Client, StdioServerParameters

EXPECTED_TOOLS = {
    "tier_status", "move_tier", "job_status", "cancel_job", "update_limits", "auto_optimize",
    "list_models", "model_info", "register_model", "pin_model", "unpin_model", "access_model",
    "queue_status",
}


class CheckFailed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise CheckFailed(what)


def text_of(result):
    return "\n".join(c.text for c in result.content if getattr(c, "type", "") == "text")


async def main(mode, command, args):
    report = {"mode": mode}
    params = StdioServerParameters(command=command, args=args)
    async with Client(params, mode=mode, read_timeout_seconds=30) as client:
        report["protocol_version"] = client.protocol_version
        listed = await client.list_tools()
        names = {t.name for t in listed.tools}
        report["tools"] = sorted(names)
        check(names == EXPECTED_TOOLS, f"tools: {sorted(names)}")
        for t in listed.tools:
            check(t.description and len(t.description) > 40, f"{t.name} has a description")
            check(t.input_schema.get("type") == "object", f"{t.name} schema is an object")
        move = next(t for t in listed.tools if t.name == "move_tier")
        check(set(move.input_schema["required"]) == {"model_name", "target_tier"}, "move_tier requires its names")

        status = await client.call_tool("tier_status", {})
        check(not status.is_error, f"tier_status: {text_of(status)}")
        sc = status.structured_content
        check(sc["status"] == "success" and "ram" in sc["tiers"], f"tier_status structured: {sc}")
        check(json.loads(text_of(status)) == sc, "tier_status text is the JSON answer")
        report["tier_order"] = sc["tier_order"]

        reg = await client.call_tool("register_model", {"model_name": "mcp-small", "size_gb": 0.1, "preferred_tier": "storage"})
        check(not reg.is_error, f"register_model: {text_of(reg)}")
        report["registered_in"] = reg.structured_content["tier"]

        moved = await client.call_tool(
            "move_tier", {"model_name": "mcp-small", "target_tier": "ram", "wait": True}
        )
        check(not moved.is_error, f"move_tier wait: {text_of(moved)}")
        job = moved.structured_content
        check(job["status"] == "success", f"waited move ended: {job}")
        report["move"] = {"job_id": job["job_id"], "status": job["status"]}

        info = await client.call_tool("model_info", {"model_name": "mcp-small"})
        check(info.structured_content["model"]["tier"] == "ram", f"model_info after the move: {info.structured_content}")

        bad = await client.call_tool("move_tier", {"model_name": "no-such-model", "target_tier": "ram"})
        check(bad.is_error, "a move of an unknown model is an error")
        report["error_text"] = text_of(bad).splitlines()[0]
        check("no-such-model" in report["error_text"], f"the error names the model: {report['error_text']}")

        typo = await client.call_tool("move_tier", {"model_name": "mcp-small", "target": "ram"})
        check(typo.is_error, "an argument the schema lacks is refused")
        report["typo_text"] = text_of(typo).splitlines()[0]

        # A waited-for move with a progress callback: progress notifications
        # (0 to 1, never backwards) while it runs, then the same answer.
        reg = await client.call_tool("register_model", {"model_name": "mcp-slow", "size_gb": 0.1, "preferred_tier": "storage"})
        check(not reg.is_error, f"register_model: {text_of(reg)}")
        seen = []

        async def on_progress(progress, total, message):
            seen.append((progress, total, message))

        slow = await client.call_tool(
            "move_tier",
            {"model_name": "mcp-slow", "target_tier": "ram", "wait": True, "bandwidth_mb_s": 1.0},
            progress_callback=on_progress,
        )
        check(not slow.is_error, f"move_tier wait with progress: {text_of(slow)}")
        check(slow.structured_content["status"] == "success", f"the slow move ended: {slow.structured_content}")
        check(len(seen) >= 2, f"progress notifications: {seen}")
        fractions = [p for p, _, _ in seen]
        check(fractions == sorted(fractions) and 0 <= fractions[0] and fractions[-1] <= 1, f"progress runs 0 to 1: {seen}")
        check(all(t == 1.0 and m and "mcp-slow" in m for _, t, m in seen), f"progress says which job: {seen}")
        report["progress_notifications"] = len(seen)

        dry = await client.call_tool("auto_optimize", {"dry_run": True})
        check(not dry.is_error and dry.structured_content["dry_run"] is True, f"auto_optimize dry run: {text_of(dry)}")
        queue = await client.call_tool("queue_status", {})
        check(not queue.is_error, f"queue_status: {text_of(queue)}")
    print(json.dumps(report))


def first_failure(e):
    """The CheckFailed inside the SDK's task-group exception groups, if any."""
    if isinstance(e, CheckFailed):
        return e
    for sub in getattr(e, "exceptions", ()):
        found = first_failure(sub)
        if found is not None:
            return found
    return None


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
    except BaseException as e:  # noqa: BLE001 - the report says what failed
        failed = first_failure(e)
        if failed is None:
            raise
        print(f"check failed: {failed}", file=sys.stderr)
        sys.exit(1)
