import imagedsl as dsl

src = dsl.context(".", ignore=["Dockerfile", "build.py"])

app = (
    dsl.image("node:18")
    .workdir("/app")
    .copy(src.select("package.json", "yarn.lock"), "./")
    .run("yarn install --frozen-lockfile")
    .copy(src, ".")
    .run("yarn build")
    .user("root")
    .cmd("yarn", "start")
)
