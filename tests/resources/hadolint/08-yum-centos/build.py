import imagedsl as dsl

app = (
    dsl.image("centos:7")
    .run("yum install -y httpd")
    .run("yum install -y php && yum clean all")
    .expose(80)
    .cmd("httpd", "-DFOREGROUND")
)
