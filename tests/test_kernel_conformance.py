"""The warden kernel passes jupyter_kernel_test's message-protocol conformance suite.

The kernel is pointed at a gateway that is not there: Python cells must behave exactly
as in ipykernel whether or not the gateway answers (cell events wait in the background).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import jupyter_kernel_test
from jupyter_client.manager import start_new_kernel

from pgserver import free_port


class WardenKernelConformance(jupyter_kernel_test.KernelTests):
    kernel_name = "warden"
    language_name = "python"
    file_extension = ".py"

    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('oops', file=sys.stderr)"
    completion_samples = [{"text": "zi", "matches": {"zip"}}]
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n\n"]
    incomplete_code_samples = ["print('''hello", "def f(x):\n  x*2"]
    invalid_code_samples = ["import = 7q"]
    code_page_something = "print?"
    code_generate_error = "raise ValueError('boom')"
    code_execute_result = [{"code": "1+2+3", "result": "6"}, {"code": "[n*n for n in range(3)]", "result": "[0, 1, 4]"}]
    code_display_data = [
        {"code": "from IPython.display import HTML, display; display(HTML('<b>test</b>'))", "mime": "text/html"},
        {"code": "from IPython.display import Math, display; display(Math('\\\\frac{1}{2}'))", "mime": "text/latex"},
    ]
    code_history_pattern = "1?2*"
    supported_history_operations = ("tail", "search")
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"

    _prefix: str = ""
    _old_env: dict[str, str | None] = {}

    @classmethod
    def setUpClass(cls) -> None:
        from warden.kernel.install import install_kernelspec

        cls._prefix = tempfile.mkdtemp(prefix="warden-conformance-")
        install_kernelspec(prefix=cls._prefix)
        overrides = {
            "JUPYTER_PATH": str(Path(cls._prefix) / "share" / "jupyter"),
            "WARDEN_GATEWAY_URL": f"http://127.0.0.1:{free_port()}",
            "WARDEN_TOKEN": "conformance",
        }
        cls._old_env = {k: os.environ.get(k) for k in overrides}
        os.environ.update(overrides)
        try:
            cls.km, cls.kc = start_new_kernel(kernel_name=cls.kernel_name)
        finally:
            for key, value in cls._old_env.items():
                if key == "JUPYTER_PATH":
                    continue  # the kernel manager still needs to find the spec on shutdown
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    @classmethod
    def tearDownClass(cls) -> None:
        try:
            super().tearDownClass()
        finally:
            old = cls._old_env.get("JUPYTER_PATH")
            if old is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = old
            shutil.rmtree(cls._prefix, ignore_errors=True)

    def test_warden_kernel_info(self) -> None:
        self.flush_channels()
        self.kc.kernel_info()
        reply = self.kc.get_shell_msg(timeout=15)
        content = reply["content"]
        self.assertEqual(content["implementation"], "warden")
        self.assertNotIn("debugger", content.get("supported_features", []))
