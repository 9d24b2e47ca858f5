"""The trainer and the agent of agent-lightning 1.0.2, as the end-to-end tests drive them. Prints
one JSON object on stdout. Keys come from the environment, never the command line.

usage: v10_client.py ACTION ARGS...
  Trainer ($AGL_KEY: the key it talks to agl-server's API with; URL is agl-server's or the guard's):
    register URL MODEL ENDPOINT     registers ENDPOINT (an OpenAI base URL) as MODEL's server
    rollout URL                     creates a rollout and marks attempt "0" running: its ids
    events URL RID                  the events of RID's current attempt, and its attempt list
  Agent (the environment agl's controller gives an agent: $AGL_OPENAI_BASE_URL, $AGL_EVENT_URL,
  $AGL_KEY):
    chat                            one chat completion through the OpenAI base URL
    stream                          the same with stream=True
    event                           one reward event, posted with agl's own httpx client
  Load ($AGL_KEY):
    load GUARD M RID...             M chat completions per rollout RID, all in flight at once (each
                                    through its rollout's base URL): the count of each status
"""
import json
import os
import sys

import httpx
import openai
from agentlightning.client import AgentLightningSyncClient


def trainer(action, url, rest):
    with AgentLightningSyncClient(key=os.environ["AGL_KEY"], base_url=url, max_retries=0, timeout=60) as http:
        if action == "register":
            model, endpoint = rest
            r = http.post("/api/models", json=[{"model": model, "endpoint": endpoint}])
            return {"status": r.status_code}
        if action == "rollout":
            r = http.post("/api/rollouts", json=[{"input": {"task": "say hello"}}])
            if r.status_code != 201:
                return {"status": r.status_code, "body": r.text}
            rid = r.json()[0]["rollout_id"]
            # What agl's controller does when it starts the agent of attempt "0".
            p = http.patch(f"/api/rollouts/{rid}", json={"status": {"state": "running", "last_attempt_id": "0"}})
            return {"status": p.status_code, "rollout_id": rid, "attempt_id": "0"}
        rid = rest[0]
        events = http.get(f"/api/rollouts/{rid}/events")
        detail = http.get(f"/api/rollouts/{rid}")
        if events.status_code != 200 or detail.status_code != 200:
            return {"status": events.status_code, "body": events.text}
        counts = {}
        for event in events.json():
            counts[event["event_type"]] = counts.get(event["event_type"], 0) + 1
        return {"status": 200, "count": len(events.json()), "types": counts,
                "attempts": detail.json()["attempts"]}


def agent(action):
    key = os.environ["AGL_KEY"]
    if action == "event":
        with AgentLightningSyncClient(key=key, max_retries=0, timeout=60) as http:
            r = http.post(os.environ["AGL_EVENT_URL"], json={"event_type": "reward", "data": {"value": 1.0}})
            return {"ok": r.status_code == 200, "status": r.status_code, "body": r.text}
    sdk = openai.OpenAI(base_url=os.environ["AGL_OPENAI_BASE_URL"], api_key=key, max_retries=0, timeout=60)
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
    except openai.APIStatusError as err:
        return {"ok": False, "status": err.status_code, "body": err.response.text}
    raise SystemExit(f"unknown action {action}")


def load(guard, per_rollout, rollouts):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    calls = [rid for rid in rollouts for _ in range(per_rollout)]
    start = threading.Barrier(len(calls))
    key = os.environ["AGL_KEY"]

    def call(rid):
        base = f"{guard}/proxy/rollout/{rid}/attempt/0/mode/train/openai/v1"
        sdk = openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=120)
        start.wait()
        try:
            sdk.chat.completions.create(model="mock-gpt", messages=[{"role": "user", "content": "hi"}])
            return "200"
        except openai.APIStatusError as err:
            return str(err.status_code)
        except openai.APIError as err:
            return type(err).__name__

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        statuses = list(pool.map(call, calls))
    counts = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return {"calls": len(calls), "statuses": counts}


def main():
    action = sys.argv[1]
    if action in ("register", "rollout", "events"):
        result = trainer(action, sys.argv[2], sys.argv[3:])
    elif action == "load":
        result = load(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
    else:
        result = agent(action)
    print(json.dumps(result))


if __name__ == "__main__":
    try:
        main()
    except httpx.HTTPError as err:
        print(json.dumps({"ok": False, "transport_error": type(err).__name__}))
