from chalice import Chalice

app = Chalice(app_name="kaos")


@app.route("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}
