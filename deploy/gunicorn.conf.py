# gunicorn config for the coda-bridge probes app:
#   gunicorn -c deploy/gunicorn.conf.py 'coda_bridge.ops.webentry:web_app()'
# Settings come from the CODA_ variables (CODA_HOST, CODA_PORT, CODA_WEB_WORKERS);
# the values live in the package so `coda-bridge web` uses the same ones.
from coda_bridge.web.gunicorn_config import *  # noqa: F403
