import imagedsl as dsl

src = dsl.context(".", ignore=["Dockerfile", "build.py"])

app = (
    dsl.image("node:20-alpine")
    .arg("NPM_TOKEN", default="npm_0123456789abcdefghijklmnopqrstuvwxyz")
    .arg("GITHUB_TOKEN", default="ghp_0123456789abcdefghijklmnopqrstuvwxyzAB")
    .workdir("/app")
    .copy(src.select("package.json", "package-lock.json"), "./")
    .run("npm ci --omit=dev")
    .user("node")
    .cmd("node", "index.js")
)
