import imagedsl as dsl

app = (
    dsl.image("fedora:40")
    .run("dnf install -y nginx")
    .run("dnf install -y curl && dnf clean all")
    .user("nginx")
    .cmd("nginx", "-g", "daemon off;")
)
