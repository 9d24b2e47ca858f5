"""The trainer and the agent of agent-lightning 0.3.0, as the end-to-end tests drive them. Prints
one JSON object on stdout.

usage: v03_client.py ACTION ARGS...
       v03_client.py serve                 reads one JSON array [ACTION, ARGS...] per stdin line
                                           and prints one line "PGV03 {result}" for each, so a
                                           test pays agl's import (LiteLLM's proxy, ~13 s) once
  rollout STORE_URL                   the trainer starts a rollout in the store: its ids
  spans STORE_URL RID                 the spans the store holds for rollout RID, per attempt
  chat GUARD KEY RID AID              the agent's chat completion through GUARD
  stream GUARD KEY RID AID            the same, streamed

The agent gets its base URL the way 0.3's agents do: from a `ProxyLLM` resource, whose
`get_base_url(rollout_id, attempt_id)` puts `/rollout/RID/attempt/AID` before the `/v1`. The
resource's endpoint is the guard's, not the LLMProxy's own port.
"""
import asyncio
import json
import sys

import openai
from agentlightning import LightningStoreClient, ProxyLLM


def agent_client(guard, key, rid, aid):
    llm = ProxyLLM(endpoint=guard + "/v1", model="mock-gpt")
    return openai.OpenAI(base_url=llm.get_base_url(rid, aid), api_key=key, max_retries=0, timeout=60)


async def trainer(action, store_url, rest):
    store = LightningStoreClient(store_url)
    try:
        if action == "rollout":
            rollout = await store.start_rollout(input={"task": "say hello"})
            return {"rollout_id": rollout.rollout_id, "attempt_id": rollout.attempt.attempt_id}
        spans = await store.query_spans(rest[0])
        attempts = {}
        for span in spans:
            attempts[span.attempt_id] = attempts.get(span.attempt_id, 0) + 1
        return {"count": len(spans), "attempts": attempts}
    finally:
        await store.close()


def act(action, rest):
    if action in ("rollout", "spans"):
        return asyncio.run(trainer(action, rest[0], rest[1:]))
    guard, key, rid, aid = rest
    sdk = agent_client(guard, key, rid, aid)
    messages = [{"role": "user", "content": "hi"}]
    try:
        if action == "chat":
            out = sdk.chat.completions.create(model="mock-gpt", messages=messages)
            return {"ok": True, "content": out.choices[0].message.content}
        if action == "stream":
            chunks = []
            for chunk in sdk.chat.completions.create(model="mock-gpt", messages=messages, stream=True):
                if chunk.choices and chunk.choices[0].delta.content:
                    chunks.append(chunk.choices[0].delta.content)
            return {"ok": True, "chunks": len(chunks), "text": "".join(chunks)}
        raise ValueError(f"unknown action {action}")
    except openai.APIStatusError as err:
        return {"ok": False, "status": err.status_code, "body": err.response.text}
    finally:
        sdk.close()


def serve():
    # agl and LiteLLM log to stdout too: the marker tells the answers from their lines.
    for line in sys.stdin:
        request = json.loads(line)
        try:
            result = act(request[0], request[1:])
        except Exception as err:  # reported to the test, which fails with it
            result = {"error": f"{type(err).__name__}: {err}"}
        print("PGV03 " + json.dumps(result), flush=True)


def main():
    if sys.argv[1] == "serve":
        serve()
        return
    print(json.dumps(act(sys.argv[1], sys.argv[2:])))


if __name__ == "__main__":
    main()
