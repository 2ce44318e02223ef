import time

import imagedsl as dsl

app = dsl.image("alpine:3.20")
print("loading", flush=True)
time.sleep(60)
