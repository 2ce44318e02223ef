import imagedsl as dsl

src = dsl.context(".", ignore=["Dockerfile", "build.py"])

app = (
    dsl.image("php:8.3-apache")
    .run("apt-get update && apt-get install -y libzip-dev unzip")
    .copy(src, "/var/www/html")
    .run("composer install --no-dev")
    .env(MAIL_PASSWORD="smtp-pass-1234")
)
