import imagedsl as dsl

src = dsl.context(".", ignore=["Dockerfile", "build.py"])

app = (
    dsl.image("debian:12-slim")
    .run(
        "apt-get update && apt-get install -y --no-install-recommends wget ca-certificates"
        " && rm -rf /var/lib/apt/lists/*"
    )
    .run("wget -O /tmp/toolkit.tar.gz https://example.com/toolkit.tar.gz")
    .run("tar -xzf /tmp/toolkit.tar.gz -C /opt && rm /tmp/toolkit.tar.gz")
    .copy(src.file("dump.sql"), "/tmp/dump.sql")
    .run("rm /tmp/dump.sql")
    .user("10001")
    .cmd("/opt/toolkit/bin/run")
)
