"""The Gradio page of ``xaibatch serve`` (the one module that imports gradio): upload or pick an image, see the
prediction and the maps, flag a wrong prediction into ``OUT/flagged/<label>/``."""

from __future__ import annotations

import html
import itertools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from .uploads import check_private_uploads, use_private_uploads

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # never phone home
use_private_uploads()  # not the shared /tmp/gradio: read once, when Gradio is imported

import gradio as gr  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from .. import layout  # noqa: E402
from ..errors import UsageError, XaibatchError, outcome  # noqa: E402
from ..pipeline.signals import catch_signals  # noqa: E402
from .address import listen_error  # noqa: E402
from .core import (  # noqa: E402
    MAX_LIME_SAMPLES,
    MAX_UPLOAD_BYTES,
    MIN_LIME_SAMPLES,
    Request,
    Result,
    Service,
    Upload,  # noqa: E402
    decode_upload,
    explain_requests,
    read_upload,
)
from .flags import Explained, save_flag  # noqa: E402
from .guard import RequestGuard  # noqa: E402
from .page import line_html, numbered, result_html  # noqa: E402
from .sources import MAX_PICKS, REPORT_ROUTE, ReportImages, demo_images  # noqa: E402

MAX_BATCH = 8  # requests that arrive together are explained as one batch, up to this many
UPLOADS_KEPT_S, UPLOADS_CHECKED_S = 86400, 3600  # Gradio's copies of uploads: removed a day on, and when it stops
REPORT_PREFIX = "report: "
# What /report/ serves of OUT: the report's pages and folders (StaticFiles refuses links out of OUT itself)
REPORT_FILES = frozenset(
    {layout.INDEX, layout.HISTORY, layout.SKIPPED, layout.CSV, layout.SANITY, layout.FAITH_CHANCE, *layout.OUTPUT_DIRS}
)

# A narrow window stacks the answer under the controls: bring it into view (a wide one has it in view: no scroll).
SHOW_ANSWER = """() => { const a = document.getElementById('xb-result');
  if (a.getBoundingClientRect().top > innerHeight / 2) a.scrollIntoView({block: 'start', behavior: 'smooth'}); }"""
CSS = ".xb-answer .xb-error{color:#b00020;font-weight:600} #xb-flagged{overflow-wrap:anywhere}"  # long paths wrap


@dataclass
class Served:
    """A running app: its URL and how to stop it."""

    url: str
    blocks: Any
    app: Any

    def close(self) -> None:
        self.blocks.close(verbose=False)  # Gradio would print its "Closing server" on stdout


def _source(demos: dict[str, bytes], report: ReportImages, file: str | None, pick: str | None) -> Upload:
    """The request's image: the uploaded file, else the picked demo or report image."""
    if file:
        if not Path(file).exists():  # removed a day after its upload (UPLOADS_KEPT_S)
            raise UsageError("this upload is no longer on the server: upload the image again")
        return read_upload(file)
    if pick in demos:
        return decode_upload(demos[pick])
    if pick and pick.startswith(REPORT_PREFIX):
        return report.read(pick[len(REPORT_PREFIX) :])
    raise UsageError("upload an image or pick one")


@dataclass
class _Handlers:
    """What the page's buttons run: explain the requests that arrive together, flag the image a tab explained."""

    service: Service
    report: ReportImages
    demos: dict[str, bytes]
    answers: Iterator[int] = field(default_factory=lambda: itertools.count(1))  # numbers every answer shown
    explained: Explained = field(default_factory=Explained)  # what flagging saves, by the sha256 a tab holds

    def picks(self) -> list[str]:
        return [*self.demos, *(REPORT_PREFIX + rel for rel in self.report.pickable()[:MAX_PICKS])]

    def picks_now(self) -> Any:
        """The pick list as the page is loaded: the report's images now (a cron job's run into OUT since the app
        started adds and removes some)."""
        return gr.Dropdown(choices=self.picks())

    def explain(self, files: list, chosen: list, methods: list, samples: list, curves: list) -> tuple[list, list]:
        """One batch of requests (Gradio's batch=True): each one's answer HTML and the sha256 of the image flagging
        would save ("" for none)."""
        asked = [self._request(*a) for a in zip(files, chosen, methods, samples, curves, strict=True)]
        results = explain_requests(self.service, [r for r, _ in asked])
        answers = [self._answer(line, r) for (_, line), r in zip(asked, results, strict=True)]
        return [html for html, _ in answers], [sha for _, sha in answers]

    def _request(
        self, file: str | None, pick: str | None, ms: list | None, n: Any, faith: Any
    ) -> tuple[Request, str | None]:
        """The request, or one that failed and its line."""
        ordered = tuple(m for m in self.service.opts.methods if m in (ms or []))  # as offered, whatever order ticked
        try:
            n = min(max(int(n), MIN_LIME_SAMPLES), MAX_LIME_SAMPLES)
            return Request(_source(self.demos, self.report, file, pick), ordered, n, bool(faith)), None
        except Exception as e:  # DecodeError included: one line (errors.outcome), never a traceback in the page
            return Request(None, ordered), outcome(e, caller="other").line

    def _answer(self, line: str | None, r: Result | str) -> tuple[str, str]:
        if line is not None or isinstance(r, str):
            return numbered(next(self.answers), line_html(line if line is not None else r)), ""
        s, u = self.service, r.upload
        html = result_html(r, s.names, s.rule(), self.report.detail_url(u.sha256))
        return numbered(next(self.answers), html), self.explained.keep(u.sha256, u.data, u.image_format)

    def flag(self, sha256: str | None, label: str | None) -> str:
        try:
            data, image_format = self.explained.get(sha256)
            f = save_flag(self.service.opts.out, label or "", data, image_format)
        except (XaibatchError, OSError) as e:
            return numbered(next(self.answers), line_html(str(e)))
        what = "saved" if f.new else "already flagged:"
        note = f"{what} {f.path} (xaibatch run {f.path.parent.parent} reports it)"
        return numbered(next(self.answers), line_html(note, "note"))


@dataclass
class _Controls:
    """The page's components that events read or write."""

    upload: Any
    pick: Any
    methods: Any
    samples: Any
    curves: Any
    go: Any
    label: Any
    flag: Any
    flagged: Any
    result: Any
    explained: Any  # the sha256 of the image the tab's answer shows (hidden): what flagging saves


def _demos() -> dict[str, bytes]:
    try:
        return demo_images()
    except XaibatchError:  # no sample photographs installed: uploads and the report's images still work
        return {}


def _header(service: Service) -> str:
    """The page's first lines, as escaped HTML: class names and the checkpoint's name are data (a gr.Markdown
    header rendered a class named ``![t](http://host/t.png)`` as a picture and dropped ``<script>...``), each in a
    ``<bdi>`` so a right-to-left name turns no text around it."""
    model = service.prepared.model

    def bdi(text: object) -> str:
        return f"<bdi>{html.escape(str(text))}</bdi>"

    return (
        f"<h2>xaibatch serve</h2><p>Model <b>{bdi(Path(model.checkpoint).name)}</b> ({bdi(model.arch)}, "
        f"{int(model.input_size)}×{int(model.input_size)}) · classes: {', '.join(bdi(n) for n in service.names)} · "
        f"device: {bdi(service.prepared.device)} · no login: keep it on 127.0.0.1</p>"
    )


def _layout(service: Service, picks: list[str]) -> _Controls:
    """The components, inside an open gr.Blocks: the header, the controls on the left, the answer on the right."""
    offered = list(service.opts.methods)
    gr.HTML(_header(service), elem_id="xb-status")
    # A component, not a gr.State: a batched event hands each request's outputs back to its own tab, but not states.
    explained = gr.Textbox("", visible=False, label="sha256 of the explained image", elem_id="xb-explained")
    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.File(label="Upload an image", type="filepath", elem_id="xb-upload")
            pick = gr.Dropdown(picks, value=None, label="…or pick a demo or report image", elem_id="xb-pick")
            methods = gr.CheckboxGroup(offered, value=offered, label="Methods", elem_id="xb-methods")
            samples = gr.Slider(
                MIN_LIME_SAMPLES,
                MAX_LIME_SAMPLES,
                value=service.default_lime_samples(),
                step=10,
                label="LIME samples",
                elem_id="xb-samples",
                visible="lime" in offered,  # a slider that changes nothing only confuses
            )
            curves = gr.Checkbox(False, label="Faithfulness curves (deletion, insertion)", elem_id="xb-curves")
            go = gr.Button("Explain", variant="primary", elem_id="xb-explain")
            label = gr.Dropdown(
                service.names,
                value=None,
                allow_custom_value=True,
                label="Wrong prediction? The correct label",
                elem_id="xb-label",
            )
            flag = gr.Button("Flag: wrong prediction", elem_id="xb-flag")
            flagged = gr.HTML(elem_id="xb-flagged")
        with gr.Column(scale=3):
            result = gr.HTML(elem_id="xb-result")
    return _Controls(upload, pick, methods, samples, curves, go, label, flag, flagged, result, explained)


def _wire(c: _Controls, h: _Handlers) -> None:
    """The events: Explain (batched, one at a time), Flag, and an upload and a pick replacing each other."""
    c.go.click(
        h.explain,
        [c.upload, c.pick, c.methods, c.samples, c.curves],
        [c.result, c.explained],
        batch=True,
        max_batch_size=MAX_BATCH,
        concurrency_limit=1,
        api_name="explain",
    ).then(None, js=SHOW_ANSWER)
    # The image explained is the one chosen last: an upload lets the pick go, a pick the upload.
    c.upload.upload(lambda _: None, c.upload, c.pick, queue=False, api_visibility="private")
    c.pick.input(lambda p: None if p else gr.update(), c.pick, c.upload, queue=False, api_visibility="private")
    c.flag.click(h.flag, [c.explained, c.label], c.flagged, api_name="flag")


def build(service: Service, report: ReportImages | None = None) -> gr.Blocks:
    """The page, wired to ``service``."""
    handlers = _Handlers(service, report or ReportImages.load(service.opts.out), _demos())
    uploads = (UPLOADS_CHECKED_S, UPLOADS_KEPT_S)  # else every upload stays in Gradio's temporary folder for good
    with gr.Blocks(title="xaibatch serve", analytics_enabled=False, delete_cache=uploads) as blocks:
        controls = _layout(service, handlers.picks())
        _wire(controls, handlers)
        blocks.load(handlers.picks_now, None, controls.pick, queue=False, api_visibility="private")
    return blocks


def launch(
    service: Service,
    host: str = "127.0.0.1",
    port: int | None = None,
    block: bool = True,
    log: Callable[[str], None] = print,
    allow_hosts: tuple[str, ...] = (),
) -> Served:
    """Start the app; with ``block`` serve until a stop signal (Ctrl-C, SIGTERM, SIGHUP), then close it."""
    from ..pipeline.notices import warn_random_weights

    warn_random_weights(service.opts.model, service.prepared.model.checkpoint, log)
    report = ReportImages.load(service.opts.out)
    if report.problem:
        log(f"xaibatch serve: the report in {service.opts.out} is not readable ({report.problem}); serving without it")
    check_private_uploads()
    blocks = build(service, report)
    blocks.queue(default_concurrency_limit=1)
    try:
        app, url, _ = blocks.launch(
            server_name=host,
            server_port=port,
            prevent_thread_lock=True,
            quiet=True,
            share=False,
            show_error=False,
            max_file_size=MAX_UPLOAD_BYTES * 2,
            css=CSS,
            app_kwargs={
                "middleware": [Middleware(RequestGuard, host=host, allow=allow_hosts)]
            },  # no rebinding, no other site's posts
        )
    except OSError as e:  # Gradio's words name its own environment variables; ours name the option
        raise listen_error(host, port, e) from e
    _mount_report(app, service.opts.out)  # also before a first run's report: it is served once it is there
    served = Served(url, blocks, app)
    if block:
        # A stop signal sets a flag, and any later one is the same stop: a second Ctrl-C, or GNU timeout's signal
        # to the process group, used to interrupt the close ("Error: interrupted", exit 5).
        with catch_signals(True, once=True) as stop:
            try:
                log(f"xaibatch serve: {url} (Ctrl-C stops)")
                while blocks.is_running and not stop.requested:  # Gradio's block_thread() prints on Ctrl-C
                    time.sleep(0.1)
            finally:
                served.close()
        if stop.requested:
            log(f"xaibatch serve: stopped{''.join(f' {a}' for a in stop.interrupt().args)}")  # "stopped by SIGTERM"
    return served


def _mount_report(app: Any, out: Path) -> None:
    """Serve the report's pages and pictures at REPORT_ROUTE, ahead of Gradio's own catch-all routes: not the rest
    of OUT (the manifest, with the input folder's path and every run's command line, nor OUT/flagged/). Mounted
    whatever OUT holds when the app starts: a report a run writes there later is served (404 until then)."""
    from starlette.exceptions import HTTPException
    from starlette.staticfiles import StaticFiles

    class ReportFiles(StaticFiles):
        async def check_config(self) -> None:
            if not os.path.isdir(out):  # no report yet (not even OUT): not found, rather than a server error
                raise HTTPException(status_code=404)
            await super().check_config()

        def get_path(self, scope: Any) -> str:
            path = super().get_path(scope)
            if path.replace("\\", "/").lstrip("/").split("/", 1)[0] not in REPORT_FILES:
                raise HTTPException(status_code=404)
            return path

    app.mount(REPORT_ROUTE, ReportFiles(directory=str(out), check_dir=False), name="xaibatch-report")
    app.router.routes.insert(0, app.router.routes.pop())
