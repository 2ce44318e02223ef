import imagedsl as dsl

src = dsl.context(".", ignore=["Dockerfile", "build.py"])

app = dsl.image("nginx:1.27").copy(src.dir("site"), "/usr/share/nginx/html/").user("root")
