import imagedsl as dsl

app = (
    dsl.image("ubuntu")
    .run("apt-get update && apt-get install -y curl ca-certificates")
    .run(
        "apt-get update && apt-get install -y --no-install-recommends git"
        " && rm -rf /var/lib/apt/lists/*"
    )
    .cmd("bash")
)
