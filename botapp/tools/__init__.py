"""Tools the model may call while answering: the registry, the built-ins, the MCP client and the loop's limits.

The funnel (`botapp.conversations`) runs the loop; this package says which tools an answer offers
(`toolbox_for`), runs the calls the model asks for (`calls_run`), and keeps them on record (`records`).
A new built-in tool is a `BuiltinTool` passed to `register` in a module listed in `registry.BUILTIN_MODULES`.
"""

from botapp.tools.registry import (
    BuiltinTool,
    Source,
    ToolContext,
    ToolError,
    ToolResult,
    builtin_tools,
    register,
)

__all__ = ["BuiltinTool", "Source", "ToolContext", "ToolError", "ToolResult", "builtin_tools", "register"]
