"""ChatConsole: talk to any OpenAI-compatible endpoint — maaskit's, vLLM, Ollama, llama.cpp's
server, a hosted API — and watch the tokens stream in, with time to first token, tokens/s and
usage under each answer. It calls the endpoint with the official ``openai`` client.

Python functions given as ``tools`` are offered to the model; when it calls one, the console shows
the call, runs the function, sends the result back and shows the final answer."""

from __future__ import annotations

import html
import inspect
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ipywidgets as w

from .base import CONTROL, WidgetBase, flow

__all__ = ["ChatConsole", "ToolRun", "Turn", "tool_schema"]

MAX_TOOL_ROUNDS = 4  # calls in one turn before the console stops asking (a model that only calls tools)


def tool_schema(function: Callable) -> dict:
    """An OpenAI tool for a Python function: its name, its docstring's first line, and a JSON
    Schema of its parameters from their annotations (Pydantic writes it)."""
    from pydantic import create_model

    fields: dict[str, Any] = {}
    for name, p in inspect.signature(function, eval_str=True).parameters.items():
        annotation = p.annotation if p.annotation is not inspect.Parameter.empty else Any
        fields[name] = (annotation, ... if p.default is inspect.Parameter.empty else p.default)
    schema = create_model(function.__name__, **fields).model_json_schema()
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    parameters = {k: v for k, v in schema.items() if k in ("type", "properties", "required")}
    doc = (inspect.getdoc(function) or "").split("\n")[0]
    return {
        "type": "function",
        "function": {
            "name": function.__name__,
            "description": doc,
            "parameters": {**parameters, "additionalProperties": False},
        },
    }


@dataclass
class ToolRun:
    """A call the model made, and what the function returned (or the error it raised)."""

    name: str
    arguments: str
    result: str = ""


@dataclass
class Turn:
    """One question and its answer, with how the answer arrived (and the tools it called)."""

    prompt: str
    answer: str = ""
    tools: list[ToolRun] = field(default_factory=list)
    finish_reason: str | None = None
    first_token_s: float | None = None  # from sending to the first text
    seconds: float | None = None  # from sending to the end
    chunks: int = 0  # content chunks received (one token each from maaskit's server)
    usage: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    @property
    def tokens_per_s(self) -> float | None:
        tokens = self.usage.get("completion_tokens", self.chunks)
        if self.seconds is None or self.first_token_s is None or self.seconds <= self.first_token_s or tokens < 2:
            return None
        return (tokens - 1) / (self.seconds - self.first_token_s)  # the decode rate, after the first token

    def stats(self) -> str:
        if self.error:
            return f"error: {self.error}"
        parts = []
        if self.first_token_s is not None:
            parts.append(f"first token after {self.first_token_s * 1000:.0f} ms")
        if self.tokens_per_s is not None:
            parts.append(f"{self.tokens_per_s:,.0f} tokens/s")
        if self.usage:
            parts.append(
                f"{self.usage.get('prompt_tokens')} prompt + {self.usage.get('completion_tokens')} completion tokens"
            )
        if self.finish_reason and self.seconds is not None:  # only once the whole turn, tool rounds included, is over
            parts.append(f"finished: {self.finish_reason}")
        return " · ".join(parts)


class ChatConsole(WidgetBase):
    """Endpoint URL and API key, **Connect** (lists the models), temperature and max tokens, a
    prompt box, **Send** and **Stop** (closes the stream: the server stops generating), and the
    conversation with each answer's figures. ``remember`` sends the whole conversation each turn
    (a small model's context fills fast; off by default). ``tools``: Python functions the model may
    call (their annotations become the tools' JSON schemas), or ``(function, tool)`` pairs with
    OpenAI tools written out (the function is called with the arguments as keywords);
    ``tool_choice`` is sent with the first answer of each turn (``"required"``: it must be a call).

    ``connect()``, ``send(prompt)`` and ``stop()`` are what the buttons do; ``send(prompt)`` streams
    in a background thread, ``send(prompt, wait=True)`` blocks until the answer is complete (for
    papermill and scripts), and ``str(console)`` is the conversation as text."""

    def __init__(
        self,
        url: str = "",
        *,
        api_key: str = "none",
        model: str | None = None,
        temperature: float = 0.8,
        max_tokens: int = 48,
        system: str | None = None,
        remember: bool = False,
        tools: Sequence[Callable | tuple[Callable, dict]] = (),
        tool_choice: str | dict | None = None,
    ):
        self.turns: list[Turn] = []
        pairs = [t if isinstance(t, tuple) else (t, tool_schema(t)) for t in tools]
        self.functions = {schema["function"]["name"]: f for f, schema in pairs}
        self.tools = [schema for _, schema in pairs]
        self.tool_choice = tool_choice  # for a turn's first answer (then "auto"); None: the endpoint's default
        self.system = system
        self.client: Any = None  # an openai.OpenAI once connected
        self.error: Exception | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        ctl, wide = CONTROL, w.Layout(width="420px")
        self.url_w = w.Text(
            value=url, description="endpoint", placeholder="http://127.0.0.1:8000/v1", style=ctl["style"], layout=wide
        )
        self.key_w = w.Password(value=api_key, description="API key", style=ctl["style"], layout=wide)
        self.connect_button = w.Button(description="Connect", icon="plug")
        self.model_w = w.Dropdown(options=[model] if model else [], value=model, description="model", **ctl)
        self.temperature_w = w.FloatSlider(value=temperature, min=0, max=2, step=0.05, description="temperature", **ctl)
        self.max_tokens_w = w.IntSlider(value=max_tokens, min=1, max=512, description="max tokens", **ctl)
        self.remember_w = w.Checkbox(value=remember, description="send the whole conversation", indent=False)
        self.prompt_w = w.Textarea(
            placeholder="Ask something, then Send", layout=w.Layout(width="100%", max_width="728px")
        )
        self.send_button = w.Button(description="Send", button_style="primary", icon="paper-plane")
        self.stop_button = w.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.history = w.HTML()
        self.status = w.HTML()
        self.history.add_class("maaskit-chat-history")
        self.status.add_class("maaskit-status")
        self.prompt_w.add_class("maaskit-chat-prompt")
        self.connect_button.on_click(lambda _: self._report(self.connect))
        self.send_button.on_click(lambda _: self._report(lambda: self.send(self.prompt_w.value)))
        self.stop_button.on_click(lambda _: self.stop())
        self.widget = w.VBox(
            [
                flow([w.VBox([self.url_w, self.key_w]), w.VBox([self.connect_button, self.model_w])]),
                flow([self.temperature_w, self.max_tokens_w, self.remember_w]),
                self.history,
                self.prompt_w,
                w.HBox([self.send_button, self.stop_button]),
                self.status,
            ]
        )
        self.widget.add_class("maaskit-chat-console")
        self._render()

    def _report(self, action: Any) -> None:
        try:
            action()
        except Exception as err:  # a button has nowhere else to report
            self.error = err
            self.status.value = f"<span style='color:#c00'><b>{type(err).__name__}:</b> {html.escape(str(err))}</span>"

    def connect(self) -> list[str]:
        """Make the client for the URL and key, and list the endpoint's models."""
        from openai import OpenAI

        url = self.url_w.value.strip().rstrip("/")
        if not url:
            raise ValueError("type the endpoint's URL first, e.g. http://127.0.0.1:8000/v1")
        if not url.endswith("/v1"):
            url += "/v1"  # OpenAI-compatible servers answer under /v1
        self.client = OpenAI(base_url=url, api_key=self.key_w.value or "none", max_retries=1, timeout=60)
        models = [m.id for m in self.client.models.list()]
        if not models:
            raise ValueError(f"{url} serves no models")
        current = self.model_w.value
        self.model_w.options = models
        self.model_w.value = current if current in models else models[0]
        self.status.value = html.escape(f"connected to {url}: {', '.join(models)}")
        return models

    def _messages(self, prompt: str) -> list[dict]:
        messages = [{"role": "system", "content": self.system}] if self.system else []
        if self.remember_w.value:
            for turn in self.turns:
                messages += [{"role": "user", "content": turn.prompt}, {"role": "assistant", "content": turn.answer}]
        return messages + [{"role": "user", "content": prompt}]

    def send(self, prompt: str, *, wait: bool = False) -> Turn:
        """Ask ``prompt``; the answer streams into the conversation. Returns its :class:`Turn`."""
        if not prompt.strip():
            raise ValueError("the prompt is empty")
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("an answer is still streaming: wait for it or press Stop")
        if self.client is None:
            self.connect()
        turn = Turn(prompt)
        messages = self._messages(prompt)
        self.turns.append(turn)
        self.prompt_w.value = ""
        self._stop.clear()
        self.send_button.disabled, self.stop_button.disabled = True, False
        self._render()  # the question shows at once; the answer grows under it
        self._thread = threading.Thread(target=self._stream, args=(turn, messages), daemon=True, name="maaskit-chat")
        self._thread.start()
        if wait:
            self.wait()
        return turn

    def _stream(self, turn: Turn, messages: list[dict]) -> None:
        assert self.client is not None
        start = time.perf_counter()
        try:
            for round_ in range(MAX_TOOL_ROUNDS):
                calls = self._one_answer(turn, messages, start, first=round_ == 0)
                if not calls or self._stop.is_set():
                    break
                # the model called tools: run them, send their results back, and let it answer
                messages.append({"role": "assistant", "content": None, "tool_calls": calls})
                for call in calls:
                    run = self._run_tool(call["function"]["name"], call["function"]["arguments"])
                    turn.tools.append(run)
                    messages.append({"role": "tool", "tool_call_id": call["id"], "content": run.result})
                self._render()
        except Exception as err:
            turn.error = f"{type(err).__name__}: {err}"
        finally:
            turn.seconds = time.perf_counter() - start
            self.send_button.disabled, self.stop_button.disabled = False, True
            self._render()

    def _one_answer(self, turn: Turn, messages: list[dict], start: float, first: bool) -> list[dict]:
        """Stream one answer into ``turn``; return the tool calls it made (assembled from their deltas)."""
        assert self.client is not None
        extra: dict[str, Any] = {"tools": self.tools} if self.tools else {}
        if self.tools and first and self.tool_choice is not None:
            extra["tool_choice"] = self.tool_choice
        stream = self.client.chat.completions.create(
            model=self.model_w.value,
            messages=messages,
            temperature=self.temperature_w.value,
            max_tokens=self.max_tokens_w.value,
            stream=True,
            stream_options={"include_usage": True},
            **extra,
        )
        calls: dict[int, dict] = {}
        with stream:
            for chunk in stream:
                if self._stop.is_set():
                    turn.finish_reason = "stopped by you"
                    break  # leaving the with-block closes the connection: the server stops generating
                if chunk.usage is not None:
                    usage = chunk.usage.model_dump(include={"prompt_tokens", "completion_tokens"})
                    turn.usage = {k: turn.usage.get(k, 0) + v for k, v in usage.items()}
                for choice in chunk.choices:
                    if choice.delta.content:
                        if turn.first_token_s is None:
                            turn.first_token_s = time.perf_counter() - start
                        turn.answer += choice.delta.content
                        turn.chunks += 1
                        self._render()
                    for delta in choice.delta.tool_calls or ():
                        call = calls.setdefault(
                            delta.index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
                        )
                        call["id"] = delta.id or call["id"]
                        if delta.function is not None:
                            call["function"]["name"] += delta.function.name or ""
                            call["function"]["arguments"] += delta.function.arguments or ""
                    if choice.finish_reason:
                        turn.finish_reason = choice.finish_reason
        return [calls[i] for i in sorted(calls)] if turn.finish_reason == "tool_calls" else []

    def _run_tool(self, name: str, arguments: str) -> ToolRun:
        run = ToolRun(name, arguments)
        function = self.functions.get(name)
        try:
            if function is None:
                raise KeyError(f"no tool named {name!r}")
            run.result = str(function(**json.loads(arguments or "{}")))
        except Exception as err:  # the model hears of the error, as a tool's answer
            run.result = f"error: {type(err).__name__}: {err}"
        return run

    def stop(self) -> None:
        """Close the stream being received; what arrived stays."""
        self._stop.set()
        self.stop_button.disabled = True

    def wait(self, timeout: float | None = 120) -> bool:
        """Block until the answer being streamed is complete; True if it is."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def _render(self) -> None:
        rows = []
        for turn in self.turns:
            calls = "".join(
                f"<div style='margin:2px 0 0 12px;font-family:monospace;color:#555' class='maaskit-tool-call'>"
                f"called {html.escape(t.name)}({html.escape(t.arguments)}) → {html.escape(t.result)}</div>"
                for t in turn.tools
            )
            rows.append(
                f"<div style='margin:4px 0'><b>you:</b> {html.escape(turn.prompt)}</div>{calls}"
                f"<div style='margin:4px 0 0 12px;white-space:pre-wrap' class='maaskit-answer'>"
                f"<b>{html.escape(str(self.model_w.value))}:</b> {html.escape(turn.answer.lstrip())}</div>"
                f"<div style='margin:0 0 8px 12px;color:#666;font-size:90%'>{html.escape(turn.stats())}</div>"
            )
        self.history.value = f"<div style='max-width:728px'>{''.join(rows)}</div>"

    def __str__(self) -> str:
        if not self.turns:
            return "ChatConsole: no conversation yet"
        return "\n".join(
            f"you: {t.prompt}\n"
            + "".join(f"  called {r.name}({r.arguments}) -> {r.result}\n" for r in t.tools)
            + f"{self.model_w.value}: {t.answer}\n  ({t.stats()})"
            for t in self.turns
        )
