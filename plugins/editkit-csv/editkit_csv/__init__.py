"""`use: csv`: triplets written by hand in a CSV file with input,edit,output columns."""

import csv

from editkit import CaptionGenerator, PluginOptions, hookimpl


class CsvCaptions(CaptionGenerator):
    name = "csv"

    class Options(PluginOptions):
        path: str

    def generate(self, job):
        with open(self.options.path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        yield rows[job.start:]  # resume: rows already on disk are skipped


@hookimpl
def register_caption_generators(register):
    register(CsvCaptions)
