"""The real client for proxyguard's end-to-end tests: the official `openai` SDK (and httpx, which
the SDK ships with, for requests the SDK cannot make). Prints one JSON object on stdout.

usage: client.py ACTION BASE_URL KEY [ARG]
  chat            one chat completion on model mock-gpt
  stream GATE     a streaming completion on model slow; creates GATE on the first chunk
  chat_model M    one chat completion on model M
  embed M         one embedding of "hello" on model M
  models          the model list
  chat_headers    one chat completion on mock-gpt, with the response headers the SDK got
  tools           a chat tool round trip on mock-gpt: tools, the assistant's tool call, its result
  responses [T]   Responses on mock-gpt: a string input with instructions, then input items (a
                  function call and its output) with a tool; T, if given, is the tool's output
  embeddings      embeddings of two strings on mock-gpt (encoding_format float: the mock's vector
                  is not base64)
  completions     one legacy completion on mock-gpt
  rate N          N model-list calls in a row; counts statuses
  http SPEC       one raw request; SPEC is JSON {method, path, headers, body, body_size, chunked, ca}
  usage SPEC      one chat completion; SPEC is JSON {model, stream, include_usage, max_tokens};
                  reports the usage the client saw and how many chunks carried it
"""
import json
import os
import sys

import httpx
import openai


def tls_context(ca):
    """Trusts CA; PG_TEST_TLS pins the version ("1.2" or "1.3") to show each one works."""
    import ssl
    context = ssl.create_default_context(cafile=ca)
    version = os.environ.get("PG_TEST_TLS")
    if version:
        pinned = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[version]
        context.minimum_version = context.maximum_version = pinned
    return context


def client(base, key, ca=None):
    http_client = httpx.Client(verify=tls_context(ca)) if ca else None
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=60, http_client=http_client)


def status_error(err):
    return {"ok": False, "status": err.status_code, "body": err.response.text,
            "retry_after": err.response.headers.get("retry-after")}


def main():
    action, base, key = sys.argv[1], sys.argv[2], sys.argv[3]
    arg = sys.argv[4] if len(sys.argv) > 4 else None
    ca = os.environ.get("PG_TEST_CA")
    sdk = client(base, key, ca)
    try:
        if action == "chat":
            out = sdk.chat.completions.create(model="mock-gpt", messages=[{"role": "user", "content": "hi"}])
            result = {"ok": True, "content": out.choices[0].message.content}
        elif action == "stream":
            chunks = []
            for chunk in sdk.chat.completions.create(
                model="slow", stream=True, messages=[{"role": "user", "content": "hi"}]
            ):
                # PG_TEST_HOLD_GATE: the test opens the gate itself (to stop the daemon mid-stream).
                if not chunks and not os.environ.get("PG_TEST_HOLD_GATE"):
                    open(arg, "w").close()
                if chunk.choices and chunk.choices[0].delta.content:
                    chunks.append(chunk.choices[0].delta.content)
            result = {"ok": True, "chunks": len(chunks), "text": "".join(chunks)}
        elif action == "chat_n":
            out = sdk.chat.completions.create(
                model="mock-gpt", n=int(arg), messages=[{"role": "user", "content": "hi"}])
            result = {"ok": True, "choices": len(out.choices)}
        elif action == "chat_headers":
            raw = sdk.chat.completions.with_raw_response.create(
                model="mock-gpt", messages=[{"role": "user", "content": "hi"}])
            out = raw.parse()
            result = {"ok": True, "content": out.choices[0].message.content,
                      "headers": dict(raw.headers)}
        elif action == "tools":
            tool = {"type": "function", "function": {"name": "ls", "description": "List a directory",
                    "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}}
            out = sdk.chat.completions.create(model="mock-gpt", tools=[tool], tool_choice="auto", messages=[
                {"role": "system", "content": "You list files."},
                {"role": "user", "content": [{"type": "text", "text": "what is in "}, {"type": "text", "text": "/etc?"}]},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "ls", "arguments": "{\"path\": \"/etc\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "hosts passwd"}])
            result = {"ok": True, "content": out.choices[0].message.content}
        elif action == "responses":
            first = sdk.responses.create(model="mock-gpt", input="hi", instructions="Be brief.")
            tool = {"type": "function", "name": "ls", "description": "List a directory",
                    "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}
            second = sdk.responses.create(model="mock-gpt", tools=[tool], input=[
                {"role": "user", "content": [{"type": "input_text", "text": "list /etc"}]},
                {"type": "function_call", "call_id": "c1", "name": "ls", "arguments": "{\"path\": \"/etc\"}"},
                {"type": "function_call_output", "call_id": "c1", "output": arg or "hosts passwd"}])
            result = {"ok": True, "first": first.output_text, "second": second.output_text}
        elif action == "embeddings":
            out = sdk.embeddings.create(model="mock-gpt", input=["one", "two"], encoding_format="float")
            result = {"ok": True, "data": len(out.data)}
        elif action == "completions":
            out = sdk.completions.create(model="mock-gpt", prompt="Say hi")
            result = {"ok": True, "text": out.choices[0].text}
        elif action == "chat_model":
            out = sdk.chat.completions.create(model=arg, messages=[{"role": "user", "content": "hi"}])
            result = {"ok": True, "content": out.choices[0].message.content}
        elif action == "embed":
            out = sdk.embeddings.create(model=arg, input="hello")
            result = {"ok": True, "embedding": out.data[0].embedding}
        elif action == "models":
            result = {"ok": True, "ids": [m.id for m in sdk.models.list().data]}
        elif action == "rate":
            counts, retry_after = {}, None
            for _ in range(int(arg)):
                try:
                    sdk.models.list()
                    counts["200"] = counts.get("200", 0) + 1
                except openai.APIStatusError as err:
                    counts[str(err.status_code)] = counts.get(str(err.status_code), 0) + 1
                    retry_after = retry_after or err.response.headers.get("retry-after")
            result = {"ok": True, "counts": counts, "retry_after": retry_after}
        elif action == "usage":
            spec = json.loads(arg)
            extra = {}
            if spec.get("max_tokens"):
                extra["max_tokens"] = spec["max_tokens"]
            if spec.get("include_usage"):
                extra["stream_options"] = {"include_usage": True}
            model = spec.get("model", "mock-gpt")
            messages = [{"role": "user", "content": "hi"}]
            if spec.get("stream"):
                text, usage, usage_chunks = [], None, 0
                for chunk in sdk.chat.completions.create(model=model, stream=True, messages=messages, **extra):
                    if chunk.usage is not None:
                        usage_chunks += 1
                        usage = chunk.usage.model_dump()
                    if chunk.choices and chunk.choices[0].delta.content:
                        text.append(chunk.choices[0].delta.content)
                result = {"ok": True, "text": "".join(text), "usage": usage, "usage_chunks": usage_chunks}
            else:
                out = sdk.chat.completions.create(model=model, messages=messages, **extra)
                result = {"ok": True, "text": out.choices[0].message.content,
                          "usage": out.usage.model_dump() if out.usage else None}
        elif action == "http":
            spec = json.loads(arg)
            body = spec.get("body")
            if spec.get("body_size"):
                body = b"{" + b" " * (spec["body_size"] - 2) + b"}"
            if spec.get("chunked") and body is not None:
                data = body.encode() if isinstance(body, str) else body
                content = (data[i:i + 65536] for i in range(0, len(data), 65536))
            else:
                content = body
            with httpx.Client(verify=tls_context(ca) if ca else True, timeout=60) as http:
                resp = http.request(spec.get("method", "POST"), base + spec["path"],
                                    headers=spec.get("headers", {}), content=content)
            result = {"ok": resp.status_code < 400, "status": resp.status_code, "body": resp.text,
                      "headers": dict(resp.headers)}
        else:
            raise SystemExit(f"unknown action {action}")
    except openai.APIStatusError as err:
        result = status_error(err)
    except (openai.APIConnectionError, httpx.TransportError) as err:
        result = {"ok": False, "connection_error": type(err).__name__}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
