"""agent-lightning 0.3.0's LLMProxy (LiteLLM's proxy app, with agl's rollout middleware and span
exporter) on a loopback port with an in-memory store, as a trainer runs it; the store is also
served over agl's store API (LightningStoreServer) for the trainer's other processes.

usage: v03_proxy.py PROXY_PORT STORE_PORT     (LiteLLM's master key comes from $PG_AGL_MASTER_KEY)

The one model is LiteLLM's `mock_response` model `mock-gpt`. The LLMProxy writes its spans into
the in-memory store directly: given a store client instead (`agl store` and a
LightningStoreClient), 0.3.0 exports them over OTLP by overriding a private field of
opentelemetry's exporter that its 1.4x releases no longer read, and they go to localhost:4318.
"""
import asyncio
import os
import sys

from agentlightning import InMemoryLightningStore, LightningStoreServer, LLMProxy
from agentlightning.utils.server_launcher import PythonServerLauncherArgs


async def main():
    proxy_port, store_port = int(sys.argv[1]), int(sys.argv[2])
    store = InMemoryLightningStore(thread_safe=True)
    server = LightningStoreServer(store, host="127.0.0.1", port=store_port)
    await server.start()
    proxy = LLMProxy(
        # LLMProxy's default readiness probe is LiteLLM's /health, which wants the master key (and
        # calls the model): with a master key set it never passes. /health/liveliness needs none.
        launcher_args=PythonServerLauncherArgs(
            port=proxy_port, host="127.0.0.1", launch_mode="thread", healthcheck_url="/health/liveliness"
        ),
        model_list=[{
            "model_name": "mock-gpt",
            "litellm_params": {
                "model": "openai/mock-gpt",
                "api_key": "sk-provider-unused",
                "mock_response": "Hello from the mock model.",
            },
        }],
        store=store,
        litellm_config={"general_settings": {"master_key": os.environ["PG_AGL_MASTER_KEY"]}},
    )
    await proxy.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
