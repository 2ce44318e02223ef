"""A multi-line setup script as a heredoc."""

import imagedsl as dsl

tool = (
    dsl.image("debian:bookworm-slim")
    .run(
        dsl.script(
            """\
set -e
mkdir -p /opt/tool/bin
echo "tool 1.0" > /opt/tool/VERSION
printf '#!/bin/sh\\necho tool\\n' > /opt/tool/bin/tool
chmod 755 /opt/tool/bin/tool
"""
        )
    )
    .env(PATH="/opt/tool/bin:$PATH")
    .cmd(["tool"])
)
