import imagedsl as dsl

app = dsl.image("alpine:3.20")
app = app.expose("http")
