import imagedsl as dsl

base = dsl.image("python").run("pip install --upgrade pip")
app = (
    base.arg("API_KEY", default="sk_live_0123456789abcdefghijklmn")
    .run("pip install requests")
    .user("1000")
    .cmd("python")
)
