"""Contract tests: the picamera2 calls in hw/camera.py against the real picamera2 source.

picamera2 cannot be imported off a Raspberry Pi (its ``__init__`` imports libcamera), so its wheel
is read as a zip file: the signatures we call are checked with :mod:`ast`, and ``converters.py``
(which needs only numpy) is imported under an empty ``picamera2`` package to run
:func:`hw.camera.yuv420_frame` on a real YUV420 buffer.

``PICAMERA2_WHEEL`` is the path to the wheel, e.g. from
``pip download --no-deps picamera2==0.3.38 -d DIR``.  Without it these tests are skipped, except
under CI (``CI=true``), where they fail: .ci/run must download the wheel.
"""

import ast
import concurrent.futures
import os
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from hw.camera import yuv420_frame

# The lores stream: 640x480 YUV420 with padded rows, as the ISP delivers it.
WIDTH, HEIGHT, STRIDE = 640, 480, 704


@pytest.fixture(scope="module")
def wheel():
    path = os.environ.get("PICAMERA2_WHEEL")
    if not path:
        reason = "PICAMERA2_WHEEL is not set (path to a wheel from: pip download --no-deps picamera2)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; under CI, .ci/run must download the picamera2 wheel")
        pytest.skip(reason)
    with zipfile.ZipFile(path) as zf:
        yield zf


def parse(wheel, module: str) -> ast.Module:
    return ast.parse(wheel.read(f"picamera2/{module}.py"))


def methods(tree: ast.Module, class_name: str) -> dict[str, ast.FunctionDef]:
    """The methods of ``class_name`` by name: their implementations, not ``@overload`` stubs."""
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name]
    assert len(classes) == 1, f"class {class_name} not found"
    return {
        n.name: n
        for n in classes[0].body
        if isinstance(n, ast.FunctionDef)
        and not any(ast.unparse(d).endswith("overload") for d in n.decorator_list)
    }


def method(tree: ast.Module, class_name: str, name: str) -> ast.FunctionDef:
    found = methods(tree, class_name)
    assert name in found, f"{class_name}.{name} not found"
    return found[name]


def arg_names(func: ast.FunctionDef) -> list[str]:
    a = func.args
    return [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]


def required_args(func: ast.FunctionDef) -> set[str]:
    """The parameters without a default value."""
    a = func.args
    positional = a.posonlyargs + a.args
    required = positional[: len(positional) - len(a.defaults)]
    required += [p for p, default in zip(a.kwonlyargs, a.kw_defaults, strict=True) if default is None]
    return {p.arg for p in required}


def calls_to(func: ast.FunctionDef, name: str) -> list[ast.Call]:
    """The calls ``<something>.name(...)`` inside ``func``."""
    return [
        n
        for n in ast.walk(func)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == name
    ]


def passes_wait(call: ast.Call) -> bool:
    """Whether ``call`` passes the local ``wait`` on, positionally or as ``wait=wait``."""
    values = call.args + [k.value for k in call.keywords if k.arg == "wait"]
    return any(isinstance(v, ast.Name) and v.id == "wait" for v in values)


# Every picamera2 call in hw/camera.py: the positional arguments we pass (by the parameter name they
# bind to) and the keyword arguments.
CALLS = [
    ("picamera2", "Picamera2", "__init__", ["camera_num"], []),
    ("picamera2", "Picamera2", "create_still_configuration", [], ["main", "lores", "buffer_count"]),
    ("picamera2", "Picamera2", "configure", ["camera_config"], []),
    ("picamera2", "Picamera2", "start", [], []),
    ("picamera2", "Picamera2", "close", [], []),
    ("picamera2", "Picamera2", "captured_request", [], ["wait", "flush"]),
    ("request", "CompletedRequest", "save", ["name", "file_output"], ["format"]),
    ("request", "CompletedRequest", "make_array", ["name"], []),
    ("request", "CompletedRequest", "get_metadata", [], []),
]


@pytest.mark.parametrize(
    ("module", "class_name", "name", "positional", "keywords"),
    CALLS,
    ids=[f"{c[1]}.{c[2]}" for c in CALLS],
)
def test_signature_accepts_our_call(wheel, module, class_name, name, positional, keywords):
    func = method(parse(wheel, module), class_name, name)
    params = arg_names(func)
    assert params[0] == "self"
    assert params[1 : 1 + len(positional)] == positional
    assert set(keywords) <= set(params)
    assert required_args(func) - {"self"} <= set(positional) | set(keywords)


def test_save_format_is_the_third_parameter(wheel):
    save = method(parse(wheel, "request"), "CompletedRequest", "save")
    assert arg_names(save)[:4] == ["self", "name", "file_output", "format"]


def test_captured_request_is_a_contextmanager(wheel):
    func = method(parse(wheel, "picamera2"), "Picamera2", "captured_request")
    decorators = {ast.unparse(d) for d in func.decorator_list}
    assert decorators & {"contextlib.contextmanager", "contextmanager"}


def test_options_is_a_dict_set_once_at_construction(wheel):
    """We set ``options["quality"]`` after configure(): nothing may replace the dict afterwards."""
    picamera2 = methods(parse(wheel, "picamera2"), "Picamera2")
    # 0.3.38 assigns it in _reset_flags(), which __init__ calls: look one call deep.
    called = {
        ast.unparse(n.func).removeprefix("self.")
        for n in ast.walk(picamera2["__init__"])
        if isinstance(n, ast.Call)
    }
    assignments = [
        (name, n.value)
        for name, func in picamera2.items()
        for n in ast.walk(func)
        if isinstance(n, ast.Assign) and any(ast.unparse(t) == "self.options" for t in n.targets)
    ]
    assert len(assignments) == 1
    name, value = assignments[0]
    assert name == "__init__" or name in called
    assert isinstance(value, ast.Dict)
    # The JPEG encoding of CompletedRequest.save must read the key we set.
    assert 'self.picam2.options.get("quality"' in wheel.read("picamera2/request.py").decode()


def test_numeric_wait_raises_timeout_error(wheel):
    """hw/camera.py turns TimeoutError into CameraTimeout: check that a numeric ``wait`` gets there."""
    tree = parse(wheel, "picamera2")
    captured = method(tree, "Picamera2", "captured_request")
    assert any(passes_wait(c) for c in calls_to(captured, "capture_request"))
    capture = method(tree, "Picamera2", "capture_request")
    assert any(passes_wait(c) for c in calls_to(capture, "dispatch_functions"))

    dispatch = method(tree, "Picamera2", "dispatch_functions")
    statements = [ast.unparse(s) for s in dispatch.body]
    assert "timeout = wait" in statements
    last = dispatch.body[-1]
    assert isinstance(last, ast.Return)
    assert "job.get_result(timeout=timeout)" in ast.unparse(last)

    get_result = method(parse(wheel, "job"), "Job", "get_result")
    assert ast.unparse(get_result.body[-1]) == "return self._future.result(timeout=timeout)"
    assert "from concurrent.futures import" in wheel.read("picamera2/job.py").decode()
    # Since Python 3.11 concurrent.futures' timeout is the builtin TimeoutError we catch.
    assert concurrent.futures.TimeoutError is TimeoutError


@pytest.fixture
def wheel_converters(wheel, tmp_path, monkeypatch):
    """Make ``picamera2.converters`` importable: the wheel's file under an empty package."""
    package = tmp_path / "picamera2"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "converters.py").write_bytes(wheel.read("picamera2/converters.py"))
    for name in ("picamera2", "picamera2.converters"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield package / "converters.py"
    # Forget the stand-in package (monkeypatch then restores whatever was there before).
    for name in [n for n in sys.modules if n.split(".")[0] == "picamera2"]:
        del sys.modules[name]


def yuv420_buffer(image: Image.Image, stride: int) -> np.ndarray:
    """``image`` laid out as picamera2's ``make_array`` returns a YUV420 stream.

    The flat buffer holds Y (h rows of ``stride`` bytes), then U and V (h/2 rows of ``stride / 2``
    bytes each), and is reshaped to ``(h * 3 // 2, stride)``.  Padding bytes are 0, which would
    show up as vivid green if the converted frame were not trimmed.
    """
    width, height = image.size
    y, cb, cr = image.convert("YCbCr").split()
    half = (width // 2, height // 2)
    cb, cr = (p.resize(half, Image.Resampling.BOX) for p in (cb, cr))
    flat = np.zeros(height * 3 // 2 * stride, np.uint8)
    y_size, uv_size = height * stride, height // 2 * stride // 2
    flat[:y_size].reshape(height, stride)[:, :width] = np.asarray(y)
    u_plane = flat[y_size : y_size + uv_size].reshape(height // 2, stride // 2)
    v_plane = flat[y_size + uv_size :].reshape(height // 2, stride // 2)
    u_plane[:, : width // 2] = np.asarray(cb)
    v_plane[:, : width // 2] = np.asarray(cr)
    return flat.reshape(height * 3 // 2, stride)


def test_yuv420_frame_of_a_photo(wheel_converters, samples):
    with Image.open(samples / "camera-traps" / "megadetector_pheasant_web.jpg") as photo:
        image = photo.convert("RGB").resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR)

    frame = yuv420_frame(yuv420_buffer(image, STRIDE), WIDTH, HEIGHT)

    assert sys.modules["picamera2.converters"].__file__ == str(wheel_converters)
    assert isinstance(frame, Image.Image)
    assert (frame.mode, frame.size) == ("RGB", (WIDTH // 2, HEIGHT // 2))
    expected = np.asarray(image.resize(frame.size, Image.Resampling.BOX), dtype=float)
    got = np.asarray(frame, dtype=float)
    assert np.abs(got.mean(axis=(0, 1)) - expected.mean(axis=(0, 1))).max() < 8
    # Pixel by pixel too, so a skewed or shifted image (a wrong stride) fails as well.
    assert np.abs(got - expected).mean() < 12


@pytest.mark.parametrize(
    ("colour", "channel"),
    [((255, 0, 0), 0), ((0, 255, 0), 1), ((0, 0, 255), 2)],
    ids=["red", "green", "blue"],
)
def test_yuv420_frame_keeps_primary_colours(wheel_converters, colour, channel):
    image = Image.new("RGB", (WIDTH, HEIGHT), colour)

    pixels = np.asarray(yuv420_frame(yuv420_buffer(image, STRIDE), WIDTH, HEIGHT))

    assert pixels.shape == (HEIGHT // 2, WIDTH // 2, 3)
    others = [c for c in range(3) if c != channel]
    assert (pixels[..., channel] > 200).all()
    assert (pixels[..., others] < 60).all()


def test_camera_properties_is_a_dict_property_keyed_by_libcamera_names(wheel):
    """We read ``camera_properties.get("Model")`` (the sensor, e.g. imx708) for EXIF Model."""
    func = method(parse(wheel, "picamera2"), "Picamera2", "camera_properties")
    assert any(ast.unparse(d) == "property" for d in func.decorator_list)
    source = wheel.read("picamera2/picamera2.py").decode()
    assert "self.camera_properties_[k.name] =" in source  # libcamera's property names: Model, ...
