FROM busybox
ADD a.txt /added/
ADD --chown=1:1 app /added-app
