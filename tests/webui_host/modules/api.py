"""The /sdapi/v1/txt2img and img2img routes: request -> processing object -> images."""

from contextlib import closing

from fastapi import FastAPI, HTTPException

from modules import processing

generations: list = []


def create_api(app: FastAPI, runners, init_script_args):
    def generate(kind, request: dict):
        runner = runners[kind]
        titles = {s.title().lower() for s in runner.alwayson_scripts}
        for title in request.get("alwayson_scripts") or {}:
            if title.lower() not in titles:
                raise HTTPException(status_code=422, detail=f"Script '{title}' not found")
        cls = processing.Txt2Img if kind == "txt2img" else processing.Img2Img
        fields = {k: v for k, v in request.items() if k in ("steps", "seed", "denoising_strength")}
        p = cls(**fields, **({"init_images": ["image"]} if kind == "img2img" else {}))
        p.is_api = True
        p.scripts = runner
        p.script_args = init_script_args(runner, request.get("alwayson_scripts"))
        with closing(p):
            processed = processing.process_images(p)
        generations.append(p)
        return {"info": processed.info}

    @app.post("/sdapi/v1/txt2img")
    def txt2img(request: dict):
        return generate("txt2img", request)

    @app.post("/sdapi/v1/img2img")
    def img2img(request: dict):
        return generate("img2img", request)

    return app
