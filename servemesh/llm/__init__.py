"""The LLM pipeline's components: processor (tokenizer, chat template, detokenizer),
engines (mock, llama.cpp) and the router. They use the runtime and the SDK only;
``servemesh.apps.llm`` assembles them with the OpenAI gateway."""
