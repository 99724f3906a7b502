# The demo origin of docker-compose.yml: origin.py on Python's standard library alone.
FROM python:3.12-alpine
COPY origin.py /srv/origin.py
USER 65534:65534
EXPOSE 8000
CMD ["python3", "-u", "/srv/origin.py"]
