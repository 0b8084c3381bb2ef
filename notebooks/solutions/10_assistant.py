"""Notebook 10's exercises, solved."""

import json


def assistant_mask(tokens):
    mask, inside = [], False
    for token in tokens:
        mask.append(1 if inside else 0)
        if token == "<|assistant|>":
            inside = True
        elif token == "<|end|>":
            inside = False
    return mask


def parse_tool_call(text):
    try:
        call = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    if not isinstance(call.get("arguments"), dict):
        return None
    return call["name"], call["arguments"]
