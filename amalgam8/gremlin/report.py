# -*- test-case-name: tests.test_gremlin_run -*-
"""
A recipe run's results for machines: JUnit XML for CI systems (one test case per check,
a C{failure} for each that failed, an C{error} when the recipe could not run) and the rows
a person reads.
"""

import xml.etree.ElementTree as ET

__all__ = ["junit_xml", "result_rows"]


def result_rows(results):
    """C{[check, source, dest, PASS|FAIL, seen]} for each result."""
    return [[r.check.name, str(r.check.source or "*"), str(r.check.dest or "*"),
             "PASS" if r.passed else "FAIL", r.seen] for r in results]


def _suite(parent, name, results, error=None):
    failures = sum(1 for r in results if not r.passed)
    suite = ET.SubElement(parent, "testsuite", name=name, tests=str(len(results) or 1),
                          failures=str(failures), errors="1" if error else "0")
    for r in results:
        case = ET.SubElement(suite, "testcase", classname=name,
                             name="{} {} -> {}".format(r.check.name, r.check.source or "*",
                                                       r.check.dest or "*"))
        if not r.passed:
            failure = ET.SubElement(case, "failure", message=r.seen, type="CheckFailed")
            failure.text = r.seen
        else:
            ET.SubElement(case, "system-out").text = r.seen
    if error:
        case = ET.SubElement(suite, "testcase", classname=name, name="recipe run")
        ET.SubElement(case, "error", message=error, type="CannotRun").text = error
    return suite


def junit_xml(report):
    """
    @param report: a L{amalgam8.gremlin.run.RunReport}.
    @return: the JUnit XML document (bytes): a suite for the baseline when there was one,
        and one for the run with faults.
    """
    root = ET.Element("testsuites", name="gremlin recipe " + report.recipe_id)
    if report.baseline is not None:
        stopped = report.faults is None
        _suite(root, "gremlin.{}.baseline".format(report.recipe_id),
               report.baseline.results, report.error if stopped else None)
    if report.faults is not None or report.baseline is None:
        _suite(root, "gremlin.{}".format(report.recipe_id),
               report.faults.results if report.faults else [], report.error)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"
