"""A local OpenAI-compatible HTTP server that shares the app's model.

`app.main(argv)` is `python -m gemma4_mac serve`. In the app, the window's engine and the server share one
`gemma4_mac.worker.ModelWorker` (the thread that owns the model): `control.LocalServer` builds a
`service.GenerationService` over it and serves `app.create_app(service, options)` with an `app.ServerHandle`.
Nothing is imported here, so `control` stays cheap until a server actually starts.
"""
