import imagedsl as dsl

app = (
    dsl.image("opensuse/leap:15.6")
    .run("zypper install -y apache2")
    .run("zypper --non-interactive install -y curl && zypper clean --all")
    .cmd("httpd")
)
