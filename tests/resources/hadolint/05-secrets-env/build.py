import imagedsl as dsl

app = (
    dsl.image("python:3.11-slim")
    .env(AWS_SECRET_ACCESS_KEY="wJalrXUtnFEMI/K7MDENG/bPxRfiCYzzzzzzzzzz")
    .env(DATABASE_PASSWORD="s3cr3t-passw0rd")
    .env(APP_ENV="production")
    .user("1000")
    .cmd("python", "app.py")
)
