-- wrk script: POST a fixed 200-byte JSON body (the body is set by the bench via env).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Invocation-Type"] = "async"
wrk.body = os.getenv("BENCH_BODY")
