"""The batch (processing) pipeline: AWS Batch on Fargate, its two task Lambdas and the Standard state machine.

Input `{"workspace": str, "job_id": str}`; Prepare → Run (`batch:submitJob.sync`) → RecordSuccess (the output prefix
becomes a data snapshot), and any failure → RecordFailure → BatchFailed. JSONPath throughout (moto's interpreter
cannot run JSONata).

Why Fargate rather than an EC2 managed compute environment: kaos batch jobs are short, single-container
processing steps over one snapshot. Fargate scales to zero with no instances, AMIs, instance roles or ECS agent
to patch, sizes each job by vCPU/memory in the job definition, and needs no instance-profile role (one role and
one AWS-managed policy fewer). EC2 would only pay off for GPUs, > 16 vCPU / 120 GiB per job, or very long
jobs where Spot/EC2 pricing matters; switching is a compute-environment change, not a contract change.

Networking: public subnets with a public IP per task and no NAT gateway (a NAT costs more per month than most
batch usage): tasks need outbound HTTPS to pull the (public) image and, for a plain python image, to pip-install
boto3. S3 traffic goes through a gateway endpoint. The security group admits no inbound traffic.
"""
from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, Size, Stack
from aws_cdk import aws_batch as batch
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from cdk.grants import DataStores, grant_sync_rule
from cdk.lambdas import LOG_RETENTION, TaskFunction
from cdk.states import (
    API_THROTTLING_BACKOFF,
    catch_all,
    job_outcome_steps,
    lambda_task,
    standard_state_machine,
    sync_task,
)

# A public image with python; the bootstrap installs boto3 when the image lacks it. Override with
# `-c batchImage=<uri>` (an image with boto3 preinstalled starts faster and needs no PyPI access).
DEFAULT_BATCH_IMAGE = "public.ecr.aws/docker/library/python:3.12-slim"
# The managed rule Step Functions creates to learn that a `.sync` Batch job finished.
BATCH_SYNC_RULE = "StepFunctionsGetEventsForBatchJobsRule"
JOB_VCPUS = 1
JOB_MEMORY_MIB = 2048
MAX_VCPUS = 16
LOG_STREAM_PREFIX = "kaos"

# JSONPaths of the execution document.
PREPARED_PATH = "$.prepared"
SUBMIT_REQUEST = "$.prepared.batch"
RAN_PATH = "$.ran"

# The SubmitJob request fields PrepareBatch returns (PascalCase, as Step Functions takes them).
SUBMIT_REQUEST_FIELDS = ("JobName", "JobQueue", "JobDefinition", "ContainerOverrides", "Timeout")
# Step Functions names Batch errors `Batch.<ErrorCode>`; throttling (HTTP 429) arrives as the SDK's generic
# `Batch.AWSBatchException`, server-side trouble as `Batch.ServerException`.
BATCH_TRANSIENT_ERRORS = [
    "Batch.AWSBatchException",
    "Batch.ServerException",
    "Batch.TooManyRequestsException",
    "Batch.ThrottlingException",
]

# Paths inside the container (the job definition's environment); prepare adds the S3 pointers and the command.
CONTAINER_ENVIRONMENT = {
    "KAOS_WORK_DIR": "/tmp/kaos/work",
    "KAOS_INPUT_DIR": "/tmp/kaos/input",
    "KAOS_OUTPUT_DIR": "/tmp/kaos/output",
    "PYTHONUNBUFFERED": "1",
}

# The container contract, run as `python -c` by every job: code snapshot → KAOS_WORK_DIR, input snapshot →
# KAOS_INPUT_DIR, `/bin/sh -c $KAOS_COMMAND` in KAOS_WORK_DIR, then (exit 0 only) KAOS_OUTPUT_DIR → KAOS_OUTPUT_URI.
# The command's own stdout/stderr pass through untouched (the log and the failure reason are the user's).
# Per-file jobs (KAOS_DATUMS_URI: the plan Prepare wrote) download only the plan's datums and run the command once
# per datum, KAOS_DATUM_PARALLELISM at a time (default: the CPU count), with KAOS_DATUM, KAOS_INPUT_FILE and a
# KAOS_OUTPUT_DIR of its own; datum i's outputs go below KAOS_OUTPUT_URI/i/, then KAOS_OUTPUT_URI/i.done marks
# it finished (even when another datum fails, so the finished ones are cached). Any failed datum fails the job.
# Datums run side by side and their commands' prints are unbuffered (PYTHONUNBUFFERED), so each datum's stdout and
# stderr come through pipes of its own and are passed on a whole line at a time: shared, two datums' lines were
# spliced mid-line in the job's log.
CONTAINER_BOOTSTRAP = """\
import os, subprocess, sys, tarfile, tempfile
try:
    import boto3
except ImportError:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "boto3"],
                   check=True, stdout=subprocess.DEVNULL)
    import boto3
env = os.environ
os.umask(0o077)  # the job's files are its workspace's: owner-only
s3 = boto3.client("s3")
def private(member, path):
    member = tarfile.data_filter(member, path)
    return member if member.mode is None else member.replace(mode=member.mode & 0o700, deep=False)
def split(uri):
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key
work, inputs, outputs = env["KAOS_WORK_DIR"], env["KAOS_INPUT_DIR"], env["KAOS_OUTPUT_DIR"]
for directory in (work, inputs, outputs):
    os.makedirs(directory, exist_ok=True)
with tempfile.TemporaryDirectory() as scratch:
    archive = os.path.join(scratch, "code.tar.gz")
    s3.download_file(*split(env["KAOS_CODE_URI"]), archive)
    with tarfile.open(archive) as tar:
        tar.extractall(work, filter=private)
# The code's requirements.txt, installed for the command only (a folder of the job's own, first on its path).
if os.path.isfile(os.path.join(work, "requirements.txt")):
    packages = env["KAOS_WORK_DIR"] + "-packages"
    subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--target", packages,
                    "-r", os.path.join(work, "requirements.txt")], check=True, stdout=sys.stderr)
    os.environ["PYTHONPATH"] = packages
def upload(directory, bucket, prefix):
    count = 0
    for root, _, names in os.walk(directory):
        for name in sorted(names):
            path = os.path.join(root, name)
            s3.upload_file(path, bucket, prefix + os.path.relpath(path, directory).replace(os.sep, "/"))
            count += 1
    return count
if env.get("KAOS_DATUMS_URI"):
    import json, threading, time
    from concurrent.futures import ThreadPoolExecutor
    printing = threading.Lock()
    def forward(pipe, stream):
        for line in pipe:
            with printing:
                stream.buffer.write(line if line.endswith(b"\\n") else line + b"\\n")
                stream.buffer.flush()
    plan = json.load(s3.get_object(**dict(zip(("Bucket", "Key"), split(env["KAOS_DATUMS_URI"]))))["Body"])
    in_bucket, in_prefix = split(env["KAOS_INPUT_URI"])
    out_bucket, out_prefix = split(env["KAOS_OUTPUT_URI"])
    def datum(item):
        index, path = item["i"], item["path"]
        source, target = os.path.join(inputs, path), os.path.join(outputs, str(index))
        os.makedirs(os.path.dirname(source), exist_ok=True)
        os.makedirs(target, exist_ok=True)
        s3.download_file(in_bucket, in_prefix + path, source)
        process = subprocess.Popen(["/bin/sh", "-c", env["KAOS_COMMAND"]], cwd=work, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, env={**env, "KAOS_DATUM": path, "KAOS_INPUT_FILE": source,
                                                                "KAOS_OUTPUT_DIR": target})
        errors = threading.Thread(target=forward, args=(process.stderr, sys.stderr))
        errors.start()
        forward(process.stdout, sys.stdout)
        errors.join()
        code = process.wait()
        if code != 0:
            print(f"kaos: datum {path} failed (exit code {code})", file=sys.stderr, flush=True)
            return code
        upload(target, out_bucket, f"{out_prefix}{index}/")
        s3.put_object(Bucket=out_bucket, Key=f"{out_prefix}{index}.done", Body=b"")
        return 0
    todo = plan["process"]
    workers = max(1, int(env.get("KAOS_DATUM_PARALLELISM") or os.cpu_count() or 1))
    print(f"kaos: {len(todo)} datum(s) to process, {len(plan['reused'])} reused; {workers} at a time; "
          f"running per datum: {env['KAOS_COMMAND']}", flush=True)
    started = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        failed = sum(1 for code in pool.map(datum, todo) if code != 0)
    print(f"kaos: processed {len(todo) - failed} datum(s) in {time.monotonic() - started:.1f} s", flush=True)
    if failed:
        print(f"kaos: {failed} of {len(todo)} datum(s) failed", file=sys.stderr, flush=True)
        sys.exit(1)
    sys.exit(0)
bucket, prefix = split(env["KAOS_INPUT_URI"])
count = 0
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
    for item in page.get("Contents", []):
        target = os.path.join(inputs, item["Key"][len(prefix):])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        s3.download_file(bucket, item["Key"], target)
        count += 1
print(f"kaos: {count} input file(s) in {inputs}; running: {env['KAOS_COMMAND']}", flush=True)
code = subprocess.call(["/bin/sh", "-c", env["KAOS_COMMAND"]], cwd=work)
if code != 0:
    sys.exit(code if code > 0 else 1)
count = upload(outputs, *split(env["KAOS_OUTPUT_URI"]))
print(f"kaos: uploaded {count} output file(s)", flush=True)
"""


class BatchJobs(Construct):
    """Compute environment, queue, job definition, task Lambdas and the state machine the API starts."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        data: DataStores,
        image: str = DEFAULT_BATCH_IMAGE,
    ) -> None:
        super().__init__(scope, id_)
        stack = Stack.of(self)
        partition, region, account = stack.partition, stack.region, stack.account
        self.image = image

        # --- Network: public subnets, no NAT, S3 gateway endpoint, rejected-traffic flow logs.
        self.vpc = ec2.Vpc(
            self, "Vpc", max_azs=2, nat_gateways=0,
            subnet_configuration=[ec2.SubnetConfiguration(name="jobs", subnet_type=ec2.SubnetType.PUBLIC,
                                                          cidr_mask=24)],
            gateway_endpoints={"S3": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.S3)},
        )
        self.flow_log_group = logs.LogGroup(
            self, "FlowLogs", retention=LOG_RETENTION, removal_policy=RemovalPolicy.DESTROY
        )
        self.vpc.add_flow_log(
            "FlowLog", destination=ec2.FlowLogDestination.to_cloud_watch_logs(self.flow_log_group),
            traffic_type=ec2.FlowLogTrafficType.REJECT,
        )
        self.security_group = ec2.SecurityGroup(
            self, "JobSecurityGroup", vpc=self.vpc, allow_all_outbound=True,
            description="kaos batch jobs: no inbound; outbound HTTPS to ECR Public, PyPI and S3",
        )

        # --- Compute: Fargate on demand (Spot could stop a job midway; jobs are not checkpointed).
        self.compute_environment = batch.FargateComputeEnvironment(
            self, "Compute", vpc=self.vpc, vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC),
            security_groups=[self.security_group], maxv_cpus=MAX_VCPUS, spot=False,
        )
        self.job_queue = batch.JobQueue(
            self, "Queue", priority=1,
            compute_environments=[batch.OrderedComputeEnvironment(compute_environment=self.compute_environment,
                                                                   order=1)],
        )

        # No job role here: this definition is the template the API copies per workspace with the workspace's own
        # role as job role (chalicelib/tenancy.py); the state machine may submit only those copies.
        self.log_group = logs.LogGroup(self, "JobLogs", retention=LOG_RETENTION, removal_policy=RemovalPolicy.DESTROY)
        self.container = batch.EcsFargateContainerDefinition(
            self, "Container",
            image=ecs.ContainerImage.from_registry(image),
            cpu=JOB_VCPUS,
            memory=Size.mebibytes(JOB_MEMORY_MIB),
            command=["python", "-c", CONTAINER_BOOTSTRAP],
            environment=CONTAINER_ENVIRONMENT,
            assign_public_ip=True,
            logging=ecs.LogDriver.aws_logs(stream_prefix=LOG_STREAM_PREFIX, log_group=self.log_group),
        )
        # No Batch-level retries: a retried attempt would upload into the same output prefix; kaos resumes
        # failed jobs explicitly instead.
        self.job_definition = batch.EcsJobDefinition(self, "JobDefinition", container=self.container,
                                                     retry_attempts=1)

        # --- Task Lambdas (their environments: cdk/lambdas.py).
        self.prepare = TaskFunction(self, "PrepareBatch", component="prepare_batch", timeout=Duration.minutes(5))
        # Hashes every output object (streamed) before registering it as a blob.
        self.record = TaskFunction(self, "RecordBatch", component="record_batch", timeout=Duration.minutes(15),
                                   memory_size=1024)
        data.grant_read_write(self.prepare.function, self.record.function)
        self.record.function.add_to_role_policy(iam.PolicyStatement(
            actions=["logs:GetLogEvents", "logs:FilterLogEvents", "logs:DescribeLogStreams"],
            resources=[self.log_group.log_group_arn],
        ))

        # --- States. Prepare's input ({"workspace", "job_id"}) is its event.
        prepare = lambda_task(self, "Prepare", self.prepare.function, result_path=PREPARED_PATH)
        run = sync_task(
            self, "Run", resource=f"arn:{partition}:states:::batch:submitJob.sync", request_path=SUBMIT_REQUEST,
            request_fields=SUBMIT_REQUEST_FIELDS, result_fields=("JobId", "JobName", "Status", "Container"),
            result_path=RAN_PATH,
        )
        API_THROTTLING_BACKOFF.retry(run, BATCH_TRANSIENT_ERRORS)
        # An output that cannot be recorded (no files, too many) fails the job with that reason; a failure that
        # cannot be recorded marks it FAILED.
        record_success, record_failure = job_outcome_steps(
            self, self.record.function, table=data.table, running=("SUBMITTED", "RUNNING"),
            success={"batch": sfn.JsonPath.object_at(RAN_PATH)}, failed="BatchFailed",
        )
        catch_all(record_failure, prepare, run)
        # A per-file job whose datums are all cached runs no container: Record reuses every output.
        nothing_to_run = sfn.Pass(self, "AllDatumsCached", result=sfn.Result.from_object({}), result_path=RAN_PATH)
        run.next(record_success)
        nothing_to_run.next(record_success)
        record_success.next(sfn.Succeed(self, "Processed"))
        definition = prepare.next(
            sfn.Choice(self, "AnythingToRun?")
            .when(sfn.Condition.boolean_equals(f"{PREPARED_PATH}.run", False), nothing_to_run)
            .otherwise(run)
        )

        self.state_machine = standard_state_machine(self, "BatchStateMachine", definition,
                                                    include_execution_data=True)

        # CustomState grants nothing: the `.sync` Batch integration's permissions, written out.
        self.jobs_arn = f"arn:{partition}:batch:{region}:{account}:job/*"
        # Each workspace's copy of the job definition, named like its role (kaos-ws-<name>-<hash>:<revision>).
        self.workspace_definitions_arn = f"arn:{partition}:batch:{region}:{account}:job-definition/kaos-ws-*"
        self.state_machine.add_to_role_policy(iam.PolicyStatement(
            # SubmitJob is authorized on the job it creates (whose id Batch assigns) as well as the queue.
            actions=["batch:SubmitJob"],
            resources=[self.job_queue.job_queue_arn, self.workspace_definitions_arn, self.jobs_arn],
        ))
        self.state_machine.add_to_role_policy(iam.PolicyStatement(
            actions=["batch:TerminateJob"], resources=[self.jobs_arn],
        ))
        self.state_machine.add_to_role_policy(iam.PolicyStatement(
            # DescribeJobs supports no resource-level permissions.
            actions=["batch:DescribeJobs"], resources=["*"],
        ))
        grant_sync_rule(self.state_machine, BATCH_SYNC_RULE)
