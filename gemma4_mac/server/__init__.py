"""A local HTTP server that shares the app's model: OpenAI's chat completions, completions and Responses
APIs and Anthropic's Messages API (docs/server.md).

`app.main(argv)` is `python -m gemma4_mac serve`. In the app, the window's engine and the server share one
`gemma4_mac.worker.ModelWorker` (the thread that owns the model): `control.LocalServer` builds a
`service.GenerationService` over it and serves `app.create_app(service, options)` with an `app.ServerHandle`.
Requests pass `guard.RequestGuard` (Host, Origin, CORS), then a route per API (routes_openai,
routes_responses, routes_anthropic) that turns the body into a `chat_spec.ChatSpec`; the service prepares
the prompt off the model thread and queues the generation on it. Nothing is imported here, so `control`
stays cheap until a server actually starts.
"""
